"""How a component judges its own settings: every problem found, then raised together.

Each component (the data module, the optimizer and scheduler settings, evaluation, callbacks,
each command's settings) checks the values it is given with a ``Problems`` collector in its
constructor or settings dataclass, and raises one ``ConfigError`` listing them all. The
pre-flight check (``chexnet_pl.settings``) builds those components as a dry run, so what it
reports is what the component itself would say. No torch here: ``--help`` and the command-line
check of mistyped keys import this module.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from chexnet_pl.errors import ConfigError, shown

T = TypeVar("T")
S = TypeVar("S", bound="Section")
# How alike a mistyped word and a candidate must be to be offered (difflib's ratio).
CLOSE = 0.75


def closest(word: str, candidates: Iterable[str], count: int = 3) -> list[str]:
    """The candidates that look most like ``word`` (a mistyped key or value), best first. A
    dotted key is compared with its siblings by its last part first (``data.imag_size`` →
    ``data.image_size``, not every ``data.*`` that shares the prefix)."""
    candidates = list(dict.fromkeys(str(c) for c in candidates))
    if "." in word:
        parent, tail = word.rsplit(".", 1)
        siblings = {c.rsplit(".", 1)[1]: c for c in candidates if c.rsplit(".", 1)[0] == parent
                    and "." in c}  # fmt: skip
        near = difflib.get_close_matches(tail, list(siblings), n=count, cutoff=CLOSE)
        if near:
            return [siblings[name] for name in near]
    return difflib.get_close_matches(word, candidates, n=count, cutoff=CLOSE)


def did_you_mean(word: str, candidates: Iterable[str], suffix: str = "") -> str:
    """``"; did you mean image=?"`` (or nothing when no candidate is close)."""
    found = closest(word, candidates)
    if not found:
        return ""
    return "; did you mean " + " or ".join(f"{name}{suffix}" for name in found) + "?"


def _checkpoint_in(key: str, folder: Path) -> str:
    """For a run folder given as a file: the checkpoint in it to give instead (or ``""``)."""
    for candidate in (folder / "checkpoints" / "best.ckpt", folder / "best.ckpt"):
        if candidate.is_file():
            return f"; give the run's best checkpoint: {key}={candidate}"
    return ""


class Problems:
    """Collects what is wrong with one component's settings, each named with its full key."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.messages: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def add(self, message: str) -> None:
        self.messages.append(message)

    def extend(self, error: ConfigError) -> None:
        self.messages.extend(error.problems)

    def __bool__(self) -> bool:
        return bool(self.messages)

    def raise_if_any(self) -> None:
        if self.messages:
            raise ConfigError(*self.messages)

    def choice(self, name: str, value: Any, allowed: Iterable[Any]) -> bool:
        allowed = tuple(allowed)
        if any(_same(value, option) for option in allowed):
            return True
        found = closest(value, [str(a) for a in allowed]) if isinstance(value, str) else []
        hint = f" (did you mean {' or '.join(found)}?)" if found else ""
        self.add(
            f"{self.key(name)}={shown(value)} is not a valid setting; use one of: "
            + ", ".join(str(a) for a in allowed)
            + hint
        )
        return False

    def flag(self, name: str, value: Any) -> bool:
        if isinstance(value, bool):
            return True
        self.add(f"{self.key(name)}={shown(value)} is not true or false")
        return False

    def text(self, name: str, value: Any, *, optional: bool = False) -> bool:
        if (optional and value is None) or (isinstance(value, str) and value):
            return True
        self.add(f"{self.key(name)}={shown(value)}: give a non-empty text")
        return False

    def path(self, name: str, value: Any, kind: str = "file", *, optional: bool = True) -> bool:
        """An existing file (or folder, ``kind="folder"``); None passes when ``optional``."""
        if optional and value is None:
            return True
        if not self.text(name, value):
            return False
        found = Path(value).expanduser()
        if found.is_file() if kind == "file" else found.is_dir():
            return True
        if kind == "file" and found.is_dir():
            self.add(f"{self.key(name)}={value} is a folder, not a file" + _checkpoint_in(
                self.key(name), found
            ))  # fmt: skip
        else:
            self.add(f"{self.key(name)}={value} is not a {kind}" + (
                "" if found.exists() or kind == "folder" else " (no such file)"
            ))  # fmt: skip
        return False

    def number(
        self,
        name: str,
        value: Any,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive: bool = False,
        integer: bool = False,
        optional: bool = False,
    ) -> bool:
        """A number (a whole one if ``integer``) in [minimum, maximum] (open if ``exclusive``);
        None passes when ``optional``."""
        if optional and value is None:
            return True
        kind = "a whole number" if integer else "a number"
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            self.add(f"{self.key(name)}={shown(value)} is not {kind}")
            return False
        low_bad = minimum is not None and (value <= minimum if exclusive else value < minimum)
        high_bad = maximum is not None and (value >= maximum if exclusive else value > maximum)
        if low_bad or high_bad:
            low = "-inf" if minimum is None else shown(minimum)
            high = "inf" if maximum is None else shown(maximum)
            left, right = ("(", ")") if exclusive else ("[", "]")
            self.add(
                f"{self.key(name)}={shown(value)} is out of range; use {kind} in "
                f"{left}{low}, {high}{right}"
            )
            return False
        return True

    def missing(self, given: Mapping[str, Any], required: Iterable[str]) -> list[str]:
        """The keys of ``required`` that ``given`` lacks, each said (``... is not given``)."""
        absent = [key for key in required if key not in given]
        self.messages += [f"{self.key(key)} is not given" for key in absent]
        return absent

    def unknown_keys(self, given: Iterable[str], known: Iterable[str]) -> list[str]:
        """Keys of ``given`` that are not settings, each with the closest ones named."""
        known = list(known)
        unknown = [key for key in given if key not in known]
        for key in unknown:
            near = closest(key, known)
            hint = f"; did you mean {' or '.join(self.key(k) for k in near)}?" if near else ""
            listing = f"; {self.prefix or 'the command'} has: {', '.join(known)}"
            self.add(f"{self.key(key)} is not a setting{hint or listing}")
        return unknown


def _same(value: Any, option: Any) -> bool:
    """Equal, and both or neither a bool (``1`` is not ``true``)."""
    return isinstance(value, bool) == isinstance(option, bool) and value == option


class Section:
    """Settings read from one config section: an attribute per key of its shipped YAML file,
    which is the one list of the settings and their defaults (a new setting is a line there).
    ``build`` lays the given values over the shipped ones: a key the file does not have is not
    a setting (named with the closest ones, as Hydra's struct mode would); with ``complete``,
    every key must be given (no default outside the YAML: a Python caller gives them all); a
    subclass judges the values in ``check``, and every problem is raised at once."""

    prefix = ""
    complete = False

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)

    def check(self, problems: Problems) -> None:
        """Add what is wrong with the values to ``problems`` (a subclass's checks)."""

    @classmethod
    def build(cls: type[S], given: Mapping[str, Any] | None, shipped: Mapping[str, Any]) -> S:
        problems = Problems(cls.prefix)
        given = dict(given or {})
        for key in problems.unknown_keys(given, list(shipped)):
            del given[key]
        if cls.complete and problems.missing(given, list(shipped)):
            problems.raise_if_any()
        settings = cls({**shipped, **given})  # a section given replaces the shipped one
        settings.check(problems)
        problems.raise_if_any()
        return settings

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__dict__})"


def settings_from(cls: type[T], section: Mapping[str, Any] | None, prefix: str) -> T:
    """``cls(**section)`` for a settings dataclass, whose ``__post_init__`` judges the values;
    unknown and missing keys are reported with them, in one ``ConfigError``."""
    values = dict(section or {})
    problems = Problems(prefix)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    for key in problems.unknown_keys(values, [f.name for f in fields]):
        del values[key]
    required = [f.name for f in fields if dataclasses.MISSING is f.default is f.default_factory]
    if problems.missing(values, required):
        problems.raise_if_any()
    try:
        settings = cls(**values)
    except ConfigError as exc:
        problems.extend(exc)
    problems.raise_if_any()
    return settings
