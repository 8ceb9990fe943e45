"""``chexnet-<command> --help``: what the command does, examples, and its own settings with the
comments of its YAML files. Read from text (the docstring the command passes, the YAML files)
without importing torch, so it answers at once."""

from __future__ import annotations

import inspect
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from chexnet_pl.config_defaults import chosen_options, group_values

# Config groups whose keys belong to a command (shown key by key, and as a choice when the group
# has several files); other groups are choices only.
SETTING_GROUPS = ("data", "model", "trainer", "callbacks", "evaluation", "decode", "ood")
HIDDEN_GROUPS = ("paths", "hydra", "_self_")
# Lightning Trainer arguments people add that the shipped trainer files do not set.
TRAINER_EXTRAS = (
    "+trainer.limit_train_batches=0.1 (a share or a count of batches), "
    "+trainer.accumulate_grad_batches=4, +trainer.gradient_clip_val=1.0, "
    "+trainer.val_check_interval=0.5: any pytorch_lightning.Trainer argument, with a +"
)
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w.+-]*):(?:\s+(?P<rest>.*))?$")
# A mapping default written as `"${oc.create:{...}}"` (so that Hydra's dict syntax replaces it):
# shown as the mapping a user types.


@dataclass(frozen=True)
class Setting:
    key: str  # dotted
    value: str  # as written in the YAML ("" for a section)
    comment: str


def _split_comment(text: str) -> tuple[str, str]:
    """``value  # comment`` → (value, comment); a ``#`` inside quotes or a URL stays."""
    if text.startswith("#"):  # `key:   # comment`: a section (or null), commented
        return "", text.lstrip("#").strip()
    match = re.search(r"\s#\s?", text)
    if match is None or text.count('"', 0, match.start()) % 2:
        return text.strip(), ""
    return text[: match.start()].strip(), text[match.end() :].strip()


def _comments(text: str) -> tuple[dict[str, tuple[str, str]], str]:
    """Per dotted key of one YAML file: (its value as written, its comment — on the line, or the
    comment lines just above it); and the file's ``# @package``."""
    found: dict[str, tuple[str, str]] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    package = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if stripped.startswith("# @package"):
            package = stripped.removeprefix("# @package").strip()
            continue
        if not stripped:
            pending = []
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):  # a header right above the first key is that key's
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _KEY_LINE.match(line)
        if match is None or stripped.startswith("- "):
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, comment = _split_comment(match["rest"] or "")
        dotted = ".".join([name for _, name in stack] + [match["key"]])
        found[dotted] = (value, comment or " ".join(pending))
        pending = []
        if not value:
            stack.append((indent, match["key"]))
    return found, package


def flow(value: Any) -> str:
    """A value as a command-line override writes it (YAML flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (value == "" or re.search(r"[,\[\]{}#]|^\s|\s$", value)):
        if value.startswith("${"):
            return value
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _is_section(value: Any) -> bool:
    """A mapping shown key by key: not empty, and every key one a dotted override can name."""
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and re.fullmatch(r"[A-Za-z_][\w-]*", k) for k in value)
    )


def yaml_values(path: Path) -> dict[str, Any]:
    """A YAML file's mapping (``{}`` when empty)."""
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def yaml_settings(path: Path, prefix: str = "") -> tuple[list[Setting], list[str]]:
    """The keys of one of the project's YAML files with their values and comments (the comment
    on the line, or the comment lines just above it), and its ``defaults`` entries as
    ``group: option`` (or a name). A mapping whose keys a dotted override cannot name
    (``Nodule or mass``) is one setting, written as a whole."""
    text = path.read_text(encoding="utf-8")
    values = yaml.safe_load(text) or {}
    comments, _ = _comments(text)
    defaults = []
    for entry in values.get("defaults") or []:
        if isinstance(entry, dict):
            defaults += [f"{group}: {flow(option)}" for group, option in entry.items()]
        else:
            defaults.append(str(entry))
    settings: list[Setting] = []

    def walk(mapping: dict[str, Any], parents: list[str]) -> None:
        for key, value in mapping.items():
            key = str(key)
            if not parents and key in ("defaults", "hydra"):
                continue
            if key.startswith("_") and key.endswith("_"):
                continue
            dotted = ".".join([*parents, key])
            written, comment = comments.get(dotted, ("", ""))
            if _is_section(value):
                settings.append(Setting(f"{prefix}{dotted}", "", comment))
                walk(value, [*parents, key])
                continue
            shown = written if written and not isinstance(value, dict) else flow(value)
            settings.append(Setting(f"{prefix}{dotted}", shown, comment))

    walk(values, [])
    return settings, defaults


def package_of(path: Path) -> str:
    """A config file's ``# @package`` (``""`` when it has none)."""
    return _comments(path.read_text(encoding="utf-8"))[1]


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


RECIPE_COLUMNS = ("recipe", "backbone", "epochs", "batch", "optimizer", "lr", "image")


def recipes(config_dir: Path, defaults: dict[str, str]) -> list[dict[str, str]]:
    """Each ``conf/experiment/<name>.yaml`` as train composes it: its backbone, epochs, batch,
    optimizer, learning rate and image size (the shipped group files, the recipe over them)."""
    rows = []
    for path in sorted((config_dir / "experiment").glob("*.yaml")):
        recipe = yaml_values(path)
        chosen = {**defaults, **chosen_options(recipe.pop("defaults", None))}
        values = {g: group_values(g, chosen[g]) for g in ("data", "model", "trainer")}
        values = OmegaConf.to_container(OmegaConf.merge(values, recipe))
        optimizer = values["model"].get("optimizer") or {}
        rows.append({
            "recipe": path.stem,
            "backbone": flow(values["model"].get("backbone")),
            "epochs": flow(values["trainer"].get("max_epochs")),
            "batch": flow(values["data"].get("batch_size")),
            "optimizer": flow(optimizer.get("name")),
            "lr": flow(optimizer.get("lr")),
            "image": f"{flow(values['data'].get('image_size'))} px",
        })  # fmt: skip
    return rows


def _table(rows: list[dict[str, str]], columns: tuple[str, ...]) -> list[str]:
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  " + "  ".join(r[c].ljust(w) for c, w in zip(columns, widths, strict=True))
              for r in rows]  # fmt: skip
    return [line.rstrip() for line in lines]


def command_help(command: str, doc: str, config_dir: Path, config_name: str | None) -> str:
    """The text of ``chexnet-<command> --help``: ``doc`` (the command's docstring, which the
    command passes) and the settings of its YAML files."""
    lines = [f"chexnet-{command}: " + inspect.cleandoc(doc), ""]
    if config_name is None:
        return "\n".join(lines)
    own, defaults = yaml_settings(config_dir / f"{config_name}.yaml")
    own = [setting for setting in own if setting.key != "task_name"]
    sections = [f"Settings (key=value; defaults from conf/{config_name}.yaml):", *_format(own)]
    groups, chosen = [], {}
    for entry in defaults:
        if ":" not in entry:
            continue
        group, option = (part.strip() for part in entry.split(":", 1))
        group = group.removeprefix("override ").strip("/")
        chosen[group] = option
        if group in HIDDEN_GROUPS:
            continue
        options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        if group in SETTING_GROUPS and option != "null":
            path = config_dir / group / f"{option}.yaml"
            prefix = "" if package_of(path) == "_global_" else f"{group}."
            settings, _ = yaml_settings(path, prefix)
            title = f"{group}.*" if prefix else "Settings"
            sections += ["", f"{title} (conf/{group}/{option}.yaml):", *_format(settings)]
            if group == "trainer":
                sections += _format([Setting("+trainer.<argument>=...", "", TRAINER_EXTRAS)])
            if len(options) < 2:
                continue
        groups.append(f"  {group}={'|'.join(options)}  (default: {option})")
    if groups:
        sections += ["", "Groups (group=option; each is a file in conf/<group>/):", *groups]
    if "experiment" in chosen:
        sections += [
            "",
            "Recipes (experiment=<recipe>: conf/experiment/<recipe>.yaml over the settings above):",
            *_table(recipes(config_dir, chosen), RECIPE_COLUMNS),
        ]
    lines += sections
    lines += [
        "",
        "Also: --check (check every setting and stop), --cfg job (print the composed config),",
        "-m key=a,b (a sweep), --hydra-help (Hydra's own options).",
    ]
    return "\n".join(lines)
