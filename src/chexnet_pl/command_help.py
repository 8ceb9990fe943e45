"""``chexnet-<command> --help``: what the command does, examples, and its own settings with the
comments of its YAML files. Read from text (the command module's docstring, the YAML files)
without importing torch or the command itself, so it answers at once."""

from __future__ import annotations

import ast
import importlib.util
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

# Config groups whose keys belong to a command (shown key by key); other groups are choices.
SETTING_GROUPS = ("data", "model", "evaluation")
HIDDEN_GROUPS = ("paths", "hydra", "_self_")
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.+-]*):(?:\s+(?P<rest>.*))?$")
# A mapping default written as `"${oc.create:{...}}"` (so that Hydra's dict syntax replaces it):
# shown as the mapping a user types.
_CREATED = re.compile(r"""^["']\$\{oc\.create:(?P<mapping>\{.*\})\}["']$""")


@dataclass(frozen=True)
class Setting:
    key: str  # dotted
    value: str  # as written in the YAML ("" for a section)
    comment: str


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` → (value, comment); a ``#`` inside quotes or a URL stays."""
    match = re.search(r"\s#\s?", text)
    if match is None or text.count('"', 0, match.start()) % 2:
        return text.strip(), ""
    return text[: match.start()].strip(), text[match.end() :].strip()


def yaml_settings(path: Path, prefix: str = "") -> tuple[list[Setting], list[str]]:
    """The keys of one of the project's YAML files with their comments (the comment on the
    line, or the comment lines just above it), and its ``defaults`` entries."""
    settings: list[Setting] = []
    defaults: list[str] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    skip_below: int | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("# @package"):
            pending = [] if not stripped else pending
            continue
        indent = len(line) - len(line.lstrip())
        if skip_below is not None:
            if indent > skip_below or stripped.startswith("- ") and indent >= skip_below:
                if stripped.startswith("- ") and stack and stack[-1][1] == "defaults":
                    defaults.append(stripped[2:].strip())
                continue
            skip_below = None
        if stripped.startswith("#"):
            if settings or stack:  # the file's header describes the command, not a key
                pending.append(stripped.lstrip("#").strip())
            continue
        if stripped.startswith("- "):
            continue
        match = _KEY_LINE.match(line)
        if match is None:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match["key"]
        value, comment = _split_comment(match["rest"] or "")
        if created := _CREATED.match(value):
            value = f"'{created['mapping']}'"
        comment = comment or " ".join(pending)
        pending = []
        if key in ("defaults", "hydra") and not stack:
            stack.append((indent, key))
            skip_below = indent
            continue
        if key.startswith("_") and key.endswith("_"):
            continue
        dotted = ".".join([name for _, name in stack] + [key])
        settings.append(Setting(f"{prefix}{dotted}", value, comment))
        if not value:
            stack.append((indent, key))
    return settings, defaults


def _docstring(module: str) -> str:
    spec = importlib.util.find_spec(module)
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    return (ast.get_docstring(ast.parse(source)) or "").strip()


def _format(settings: list[Setting], width: int = 100) -> list[str]:
    lines = []
    for setting in settings:
        head = f"  {setting.key}" + (f"={setting.value}" if setting.value else "")
        if not setting.comment:
            lines.append(head)
            continue
        column = 36
        body = textwrap.wrap(setting.comment, width - column - 1) or [""]
        if len(head) < column:
            lines.append(f"{head:<{column}} {body[0]}")
        else:
            lines.extend([head, f"{'':<{column}} {body[0]}"])
        lines.extend(f"{'':<{column}} {more}" for more in body[1:])
    return lines


def command_help(command: str, module: str, config_dir: Path, config_name: str | None) -> str:
    """The text of ``chexnet-<command> --help``."""
    lines = [f"chexnet-{command}: " + _docstring(module), ""]
    if config_name is None:
        return "\n".join(lines)
    own, defaults = yaml_settings(config_dir / f"{config_name}.yaml")
    own = [setting for setting in own if setting.key != "task_name"]
    sections = [f"Settings (key=value; defaults from conf/{config_name}.yaml):", *_format(own)]
    groups = []
    for entry in defaults:
        if ":" not in entry:
            continue
        group, option = (part.strip() for part in entry.split(":", 1))
        group = group.removeprefix("override ").strip("/")
        if group in HIDDEN_GROUPS:
            continue
        if group in SETTING_GROUPS and option != "null":
            settings, _ = yaml_settings(config_dir / group / f"{option}.yaml", f"{group}.")
            sections += ["", f"{group}.* (conf/{group}/{option}.yaml):", *_format(settings)]
        else:
            options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
            groups.append(f"  {group}={'|'.join(options)}  (default: {option})")
    if groups:
        sections += ["", "Groups (group=option; each is a file in conf/<group>/):", *groups]
    lines += sections
    lines += [
        "",
        "Also: --check (check every setting and stop), --cfg job (print the composed config),",
        "-m key=a,b (a sweep), --hydra-help (Hydra's own options).",
    ]
    return "\n".join(lines)
