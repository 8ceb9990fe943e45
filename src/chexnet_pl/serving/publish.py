"""Where an export goes, checked before the export's work, and how its two files (the model and its
JSON sidecar) are published as one unit.

- ``out=`` an existing folder (or a path ending in ``/``) → the default name inside it
  (``<checkpoint stem>.onnx`` / ``.pt``); the destination's folder must be writable, which is
  tried before the minute an ONNX export can take.
- A ``.partial`` file left beside the destination by an export that was killed is named in the
  log and removed.
- Both files are written in full as ``.partial`` files; the sidecar, which holds the model's
  SHA-256, is renamed into place first, then the model. A reader (``card.read_sidecar``) checks
  that hash, so an export stopped between the two renames — a new sidecar beside the old model —
  is refused as such instead of describing another model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from chexnet_pl.errors import ServingError
from chexnet_pl.files import atomic_write, unwritable_reason
from chexnet_pl.serving.sidecar import sidecar_path

log = logging.getLogger(__name__)

PARTIAL = ".partial"


def destination(out: str | Path | None, checkpoint: Path, suffix: str) -> Path:
    """The model file to write: ``out``, or the default name (``<checkpoint stem><suffix>``)
    beside the checkpoint or inside ``out`` when it is a folder."""
    default_name = checkpoint.with_suffix(suffix).name
    if not out:
        return checkpoint.with_suffix(suffix)
    given = str(out)
    out = Path(out).expanduser()
    if out.is_dir() or given.endswith(("/", "\\")):
        return out / default_name
    return out


def prepare_destination(out: Path) -> None:
    """Stop before any work when ``out``'s folder cannot be written; remove what an interrupted
    export left there."""
    parent_is_a_file = out.parent.exists() and not out.parent.is_dir()
    reason = "it is a file, not a folder" if parent_is_a_file else unwritable_reason(out.parent)
    if reason is not None:
        raise ServingError(
            f"out={out}: cannot write to {out.parent} ({reason}); nothing was exported. Give a "
            "writable folder or file with out="
        )
    for target in (out, sidecar_path(out)):
        if target.is_dir():
            raise ServingError(f"out={out}: {target} is a folder; give another file name with out=")
        partial = target.with_name(target.name + PARTIAL)
        if partial.exists():
            log.warning(
                "removing %s: left by an export that was stopped before it finished", partial
            )
            partial.unlink()


def publish(out: Path, data: bytes, card: dict[str, Any]) -> Path:
    """Write ``data`` to ``out`` and ``card`` (with the model's SHA-256 and size) to its sidecar,
    sidecar first (see the module's notes). Returns the sidecar's path."""
    sidecar = sidecar_path(out)
    card = {**card, "model_sha256": hashlib.sha256(data).hexdigest(), "model_bytes": len(data)}
    with atomic_write(out, PARTIAL) as model_partial:
        with atomic_write(sidecar, PARTIAL) as sidecar_partial:
            model_partial.write_bytes(data)
            sidecar_partial.write_text(json.dumps(card, indent=2) + "\n")
        # the sidecar is in place here; the model follows when this block ends
    return sidecar
