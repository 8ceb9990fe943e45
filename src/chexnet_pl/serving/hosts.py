"""Which ``Host`` headers the service answers (DNS rebinding).

A page on another site can make a browser send requests to ``http://127.0.0.1:8000`` by
resolving its own name to 127.0.0.1 (DNS rebinding); the browser then treats the service as
part of that site and lets the page read the answers. Such requests carry the site's name in
their ``Host`` header. A service bound to loopback therefore answers only requests addressed to
it by a loopback name (``127.0.0.1``, ``localhost``, ``::1``), plus the names of
``allowed_hosts`` (``*``: any). Bound to another address (``host=0.0.0.0``), it answers any name
unless ``allowed_hosts`` lists them.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chexnet_pl.errors import ConfigError, shown

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """``Host`` header → the name, without port, brackets, case or a trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8000
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def allowed_host_names(
    bind_host: str, allowed_hosts: Sequence[str] | None
) -> frozenset[str] | None:
    """The ``Host`` names to answer (None: any), for a service bound to ``bind_host``."""
    if allowed_hosts is not None and (
        isinstance(allowed_hosts, str) or not all(isinstance(h, str) and h for h in allowed_hosts)
    ):
        raise ConfigError(
            f"allowed_hosts={shown(allowed_hosts)}: give a list of host names, e.g. "
            "allowed_hosts=[xray.example.org] (or allowed_hosts=['*'] for any)"
        )
    extra = [host_name(h) for h in allowed_hosts or ()]
    if "*" in extra or (not extra and not is_loopback(bind_host)):
        return None
    names = {*LOOPBACK_NAMES, *extra}
    if not is_loopback(bind_host):
        names.add(host_name(bind_host))
    return frozenset(names)


class HostCheck:
    """ASGI middleware: a request whose ``Host`` header names none of ``allowed`` (None: any) is
    answered 400 with a JSON message, before any endpoint runs. A request without a ``Host``
    header (HTTP/1.0 clients) is answered: browsers always send one."""

    def __init__(
        self, app: ASGIApp, allowed: frozenset[str] | None, on_refused: Callable[[], None]
    ) -> None:
        self.app = app
        self.allowed = allowed
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.allowed is not None:
            header = dict(scope["headers"]).get(b"host")
            name = host_name(header.decode("latin-1")) if header is not None else None
            if name is not None and name not in self.allowed:
                self.on_refused()
                log.warning(
                    "refused a request for Host %r (answers: %s)", name, sorted(self.allowed)
                )
                message = (
                    f"this service does not answer requests for host {name!r}: it answers "
                    f"{', '.join(sorted(self.allowed))}. Open it by one of those names (e.g. "
                    "http://127.0.0.1:<port>/); whoever runs it can add a name with "
                    "allowed_hosts=[name]. (A page of another site reaching a local service "
                    "under its own name is how DNS rebinding works, so other names are refused.)"
                )
                await JSONResponse({"error": message}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
