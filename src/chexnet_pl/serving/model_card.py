"""``MODEL_CARD.md``: a trained model described in the sections of Mitchell et al. 2019 ("Model
Cards for Model Reporting": model details, intended use, factors, metrics, evaluation data,
training data, ethical considerations, caveats and recommendations), written by every
``chexnet-export`` beside the exported model and by ``chexnet_pl.model_card``.

Everything in it is read from the run's own files, each named where it is used:

- the run folder (``<run>/checkpoints/best.ckpt`` → ``<run>``): ``model.json``, the Hydra config
  (``config_resolved.yaml``, else ``.hydra/config.yaml`` read as text, never resolved),
  ``run_summary.json``, and the checkpoint's stored hyper-parameters;
- its evaluation (the folder of the operating thresholds: ``thresholds=``, else the ``aucs.csv``
  beside the checkpoint or in its run folder, as every command finds them): ``aucs.csv`` (AUROC
  with CIs, thresholds and their rule, ECE, Brier), ``calibration.json``, ``subgroups.csv``,
  ``underdiagnosis.csv``, ``expert_aucs.csv``; with ``evaluations=``, other ``chexnet-evaluate``
  folders of the same model too (external validation: ``internal_auroc`` beside ``auroc``);
- the export's sidecar, when there is one: format, SHA-256s, and the state of the
  out-of-distribution detector (``ood``) and conformal "refer" (``conformal``) when it records
  them (else the checkpoint's own ``ood`` / ``conformal`` entries).

A section whose files are absent says so, naming the folder looked in and the command that
fills it; nothing is written that the files do not say. Numbers are printed to 4 decimals.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from chexnet_pl.errors import DataError
from chexnet_pl.files import atomic_write

log = logging.getLogger(__name__)

CARD_FILE = "MODEL_CARD.md"
SECTIONS = (
    "Model details",
    "Intended use",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Ethical considerations",
    "Caveats and recommendations",
)
STATE_KEYS = ("ood", "conformal")  # the sidecar's (or checkpoint's) state of issue 34's features
AUCS = "aucs.csv"
GAP = "gap (max - min)"  # evaluation.subgroups.GAP
MEAN_PREFIX = "Mean"
LEAVES_SHOWN = 40
# Data settings that say how images were loaded, not which: left out of "Training data".
MECHANICS = ("augment", "decode_check", "report_dir", "batch_size", "eval_batch_size",
             "num_workers", "pin_memory", "cache", "loader", "device_memory_share",
             "check_images", "_convert_")  # fmt: skip


def number(value: Any, digits: int = 4) -> str:
    """A number as the card prints it ("undefined" for a blank or NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "undefined"
    return "undefined" if math.isnan(value) else f"{value:.{digits}f}"


def count(value: Any) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "undefined"
    return "undefined" if math.isnan(value) else str(int(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _leaves(value: Any, where: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, scalar) of nested mappings; long lists are counted, not listed."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list | tuple) and len(value) > 20:
        yield where, f"({len(value)} values)"
    elif isinstance(value, list | tuple) and any(isinstance(v, Mapping | list) for v in value):
        yield where, f"({len(value)} entries)"
    else:
        yield where, value


def _settings_lines(values: Mapping[str, Any], skip: Sequence[str] = ()) -> list[str]:
    leaves = [(k, v) for k, v in _leaves(values) if not k.startswith(tuple(skip))]
    lines = [f"- `{k}`: `{v}`" for k, v in leaves[:LEAVES_SHOWN]]
    if len(leaves) > LEAVES_SHOWN:
        lines.append(f"- … and {len(leaves) - LEAVES_SHOWN} more")
    return lines


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} is damaged ({exc}); write it again (it is a run's file)") from exc
    return value if isinstance(value, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    """A YAML file as plain text values (``yaml.safe_load``: interpolations stay as written)."""
    import yaml

    if not path.is_file():
        return None
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path} is damaged ({exc}); it is a run's config file") from exc
    return value if isinstance(value, dict) else None


def _read_csv(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path} as a CSV ({exc}); it is an evaluation's file") from exc


def run_folder(path: str | Path) -> Path:
    """The training run a checkpoint or export belongs to: its folder, or the one above
    (``<run>/checkpoints/best.ckpt`` → ``<run>``) when that holds the run's files."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):
        if any((candidate / n).exists() for n in ("model.json", ".hydra", "config_resolved.yaml")):
            return candidate
    return folder


@dataclass
class Evaluation:
    """One evaluation folder: its aucs.csv and the files written beside it."""

    folder: Path
    how: str  # how it was found
    aucs: pd.DataFrame

    def file(self, name: str) -> Path:
        return self.folder / name

    @property
    def config(self) -> dict[str, Any]:
        return _read_yaml(self.folder / ".hydra" / "config.yaml") or {}

    @property
    def external(self) -> bool:
        return "internal_auroc" in self.aucs.columns


def read_evaluation(folder: Path, how: str) -> Evaluation:
    aucs = _read_csv(folder / AUCS)
    if aucs is None or "class" not in aucs or "auroc" not in aucs:
        raise DataError(
            f"{folder} has no {AUCS} with 'class' and 'auroc' columns; give the folder an "
            "evaluation wrote (chexnet-evaluate's output folder, or a training run's)"
        )
    return Evaluation(folder, how, aucs)


def find_evaluations(
    checkpoint: Path, thresholds: str | Path | None, extra: Sequence[str | Path]
) -> list[Evaluation]:
    """The run's own evaluation (where its operating thresholds come from, as every command finds
    them) and the ``extra`` folders given."""
    found: list[Evaluation] = []
    if thresholds:
        folder = Path(thresholds).expanduser().parent
        found.append(read_evaluation(folder, "the thresholds= given"))
    else:
        for folder, how in ((checkpoint.parent, "beside the checkpoint"),
                            (checkpoint.parent.parent, "in the checkpoint's run folder")):  # fmt: skip
            if (folder / AUCS).is_file():
                found.append(read_evaluation(folder, how))
                break
    for folder in extra:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise DataError(f"evaluation folder not found: {folder} (a chexnet-evaluate output)")
        if all(e.folder.resolve() != folder.resolve() for e in found):
            found.append(read_evaluation(folder, "given"))
    return found


def calibration_fields(thresholds_source: Path | None, class_names: Sequence[str]) -> dict:
    """The sidecar's ``calibration``: the ``calibration.json`` fitted by the evaluation whose
    thresholds the export records (beside that ``aucs.csv``), checked, with its file name; None
    when that evaluation fitted none. Recorded, not applied: ``calibration=`` applies one."""
    from chexnet_pl.evaluation.calibration import Calibration

    path = Path(thresholds_source).parent / "calibration.json" if thresholds_source else None
    if path is None or not path.is_file():
        return {"calibration": None}
    fitted = Calibration.read(path, list(class_names))
    return {"calibration": {**fitted.to_json(), "file": path.name, "applied": False}}


def _checkpoint_parts(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's stored settings and any ``ood``/``conformal`` state (weights unread)."""
    if checkpoint.suffix.lower() != ".ckpt" or not checkpoint.is_file():
        return {}
    from chexnet_pl.checkpoints.file_io import read_checkpoint

    stored = read_checkpoint(checkpoint, lazy=True)
    return {k: stored.get(k) for k in ("hyper_parameters", "datamodule_hyper_parameters",
                                       *STATE_KEYS) if stored.get(k) is not None}  # fmt: skip


class _Card:
    """The card's text, built section by section from the files."""

    def __init__(
        self,
        checkpoint: Path,
        sidecar: Mapping[str, Any] | None,
        evaluations: list[Evaluation],
    ) -> None:
        self.checkpoint = checkpoint
        self.sidecar = dict(sidecar or {})
        self.run = run_folder(checkpoint)
        self.evaluations = evaluations
        self.main = evaluations[0] if evaluations else None
        self.identity = _read_json(self.run / "model.json") or {}
        self.config_file = next(
            (p for p in (self.run / "config_resolved.yaml", self.run / ".hydra" / "config.yaml")
             if p.is_file()), None,
        )  # fmt: skip
        self.config = _read_yaml(self.config_file) if self.config_file else None
        self.stored = _checkpoint_parts(checkpoint)
        self.summary = _read_json(self.run / "run_summary.json")
        hparams = self.stored.get("hyper_parameters") or {}
        network = self.sidecar.get("network") or {}
        self.classes = list(
            self.sidecar.get("classes") or self.identity.get("classes")
            or hparams.get("class_names") or network.get("classes") or []
        )  # fmt: skip

    def no_evaluation(self) -> str:
        return (
            f"No evaluation of this model was found in {self.run} (no {AUCS} beside "
            f"{self.checkpoint.name} or in its run folder); run chexnet-evaluate "
            f"ckpt={self.checkpoint} (or train with test=true) and export again."
        )

    def text(self) -> str:
        name = self.sidecar.get("model") or self.identity_line()
        lines = [
            f"# Model card: {name}",
            "",
            f"Written from the files of the run {self.run} (sections of Mitchell et al. 2019, "
            "*Model Cards for Model Reporting*). Every statement below is read from the file "
            "named with it; a section whose files are absent says so.",
        ]
        for title, build in zip(SECTIONS, (
            self.model_details, self.intended_use, self.factors, self.metrics,
            self.evaluation_data, self.training_data, self.ethics, self.caveats,
        ), strict=True):  # fmt: skip
            lines += ["", f"## {title}", "", *build()]
        return "\n".join(lines) + "\n"

    def identity_line(self) -> str:
        if not self.identity:
            return self.checkpoint.name
        return (f"{self.identity.get('backbone')}, recipe {self.identity.get('recipe') or 'defaults'}"
                f", {self.identity.get('label_set')}, {self.identity.get('image_size')} px")  # fmt: skip

    # --- sections --------------------------------------------------------------------------

    def model_details(self) -> list[str]:
        lines = []
        if self.identity:
            lines += [
                f"From {self.run / 'model.json'}:",
                f"- Backbone: `{self.identity.get('backbone')}`",
                f"- Recipe: `{self.identity.get('recipe') or 'defaults (no experiment=)'}`",
                f"- Label set: {self.identity.get('label_set')}",
                f"- Input size: {self.identity.get('image_size')} px",
            ]
        else:
            lines.append(f"No model.json in {self.run} (written by chexnet-train).")
        lines.append(
            f"- Outputs ({len(self.classes)}): " + ", ".join(f"`{c}`" for c in self.classes)
        )
        lines.append(f"- Checkpoint: `{self.checkpoint.name}`")
        if self.sidecar:
            lines += [
                "",
                "From the export's sidecar:",
                f"- Format: `{self.sidecar.get('format')}` (`{self.sidecar.get('file')}`, "
                f"SHA-256 `{self.sidecar.get('model_sha256')}`), exported by "
                f"{self.sidecar.get('exporter')} with torch {self.sidecar.get('torch')}",
                f"- Checkpoint SHA-256: `{self.sidecar.get('checkpoint_sha256')}`",
            ]
            pre = self.sidecar.get("preprocessing") or {}
            if pre:
                lines += [f"- Input: `{pre.get('input')}`", f"- Resize: {pre.get('resize')}",
                          f"- Normalisation: {pre.get('normalisation')} (mean {pre.get('mean')}, "
                          f"std {pre.get('std')})"]  # fmt: skip
        hparams = self.stored.get("hyper_parameters")
        if hparams:
            lines += ["", f"Training hyper-parameters stored in {self.checkpoint.name}:"]
            lines += _settings_lines(hparams, skip=("class_names",))
        if self.summary:
            lines += [
                "",
                f"From {self.run / 'run_summary.json'}: best epoch {self.summary.get('best_epoch')}"
                f", {self.summary.get('monitor')} {number(self.summary.get('best_monitor'))} "
                f"(mode {self.summary.get('mode')}).",
            ]
        return lines

    def intended_use(self) -> list[str]:
        data = self.identity.get("data") or "data not recorded"
        lines = [
            f"What the run records: a classifier of {len(self.classes)} outputs trained on "
            f"`{data}` labels; for each image it gives every output's probability and, at that "
            "output's operating threshold (see Metrics), a verdict. Images are read as 8-bit gray "
            f"and resized to {self.identity.get('image_size') or self.sidecar.get('image_size')} "
            "px.",
            "",
            "The run's files record no clinical use, intended users or out-of-scope uses, and "
            "this card asserts none: no file of the run says that the model was validated for "
            "care of patients.",
        ]
        return lines

    def factors(self) -> list[str]:
        lines = []
        for evaluation in self.evaluations:
            table = _read_csv(evaluation.file("subgroups.csv"))
            if table is None or "attribute" not in table:
                continue
            lines.append(f"Patient groups scored in {evaluation.file('subgroups.csv')}:")
            cells = table[table["subgroup"] != GAP]
            for attribute, rows in cells.groupby("attribute", sort=False):
                groups = rows.drop_duplicates("subgroup")
                shown = ", ".join(f"{r.subgroup} ({count(r.images)} images)"
                                  for r in groups.itertuples())  # fmt: skip
                lines.append(f"- `{attribute}`: {shown}")
        view = ((self.config or {}).get("data") or {}).get("view_position")
        if view is not None:
            lines.append(f"- Views trained on (data.view_position in {self.config_file}): `{view}`")
        if not lines or all(line.startswith("- Views") for line in lines):
            where = self.main.folder if self.main else self.run
            lines.insert(0, (
                f"No subgroup evaluation of this model was found in {where} (no subgroups.csv); "
                "run chexnet-evaluate on data whose table names sex, age or view "
                "(evaluation.subgroups) to score the model per patient group."
            ))  # fmt: skip
        return lines

    def metrics(self) -> list[str]:
        if self.main is None:
            return [self.no_evaluation(), *self.threshold_lines()]
        aucs = self.main.aucs
        level = (self.main.config.get("evaluation") or {}).get("confidence") or (
            ((self.config or {}).get("evaluation") or {}).get("confidence")
        )
        ci = f"{float(level):.0%} CI" if isinstance(level, int | float) else "CI"
        lines = [f"Per output on the evaluated split, from {self.main.file(AUCS)} "
                 f"({ci}: patient bootstrap; ECE and Brier of the probabilities):", ""]  # fmt: skip
        columns = [("auroc", "AUROC", number), ("ci_low", f"{ci} low", number),
                   ("ci_high", f"{ci} high", number), ("positives", "positives", count),
                   ("negatives", "negatives", count), ("threshold", "threshold", number),
                   ("sensitivity", "sensitivity", number), ("specificity", "specificity", number),
                   ("ece", "ECE", number), ("brier", "Brier", number)]  # fmt: skip
        present = [c for c in columns if c[0] in aucs.columns]
        rows = [[str(r["class"]), *(f(r[c]) for c, _, f in present)]
                for r in aucs.to_dict("records")]  # fmt: skip
        lines += _table(["output", *(h for _, h, _ in present)], rows)
        lines += ["", *self.threshold_lines(), "", *self.calibration_lines()]
        return lines

    def threshold_lines(self) -> list[str]:
        chosen = self.sidecar.get("thresholds_chosen") or {}
        if self.main is not None and "threshold" in self.main.aucs:
            from chexnet_pl.evaluation.thresholds import _rule

            rule = _rule(self.main.aucs) or "not recorded in the file"
            line = (f"Operating thresholds: the `threshold` column of {self.main.file(AUCS)}, "
                    f"chosen by {rule}.")  # fmt: skip
        elif self.sidecar:
            line = (f"Operating thresholds recorded in the export: "
                    f"{self.sidecar.get('thresholds_source')} ({chosen.get('rule')}).")  # fmt: skip
        else:
            return ["No operating thresholds were found: every output is called at 0.5."]
        statuses = []
        if self.main is not None and "threshold_status" in self.main.aucs:
            statuses = [f"- `{r['class']}`: {r['threshold_status']}"
                        for r in self.main.aucs.to_dict("records")
                        if isinstance(r["threshold_status"], str) and r["threshold_status"] != "ok"]  # fmt: skip
        if statuses:
            return [line, "Thresholds without a clean verdict:", *statuses]
        return [line]

    def calibration_lines(self) -> list[str]:
        assert self.main is not None
        fitted = _read_json(self.main.file("calibration.json"))
        if fitted is None:
            return [f"No calibration was fitted (no calibration.json in {self.main.folder}): the "
                    "probabilities and the ECE/Brier above are uncalibrated."]  # fmt: skip
        return [f"Calibration fitted ({self.main.file('calibration.json')}): "
                f"`{fitted.get('method')}` on {fitted.get('fitted_on')}, "
                f"{fitted.get('formula')}."]  # fmt: skip

    def evaluation_data(self) -> list[str]:
        if not self.evaluations:
            return [self.no_evaluation()]
        lines = []
        for evaluation in self.evaluations:
            config = evaluation.config
            split = config.get("split") or ("test" if evaluation.folder == self.run else "?")
            data = config.get("data") or ((self.config or {}).get("data") if evaluation.folder == self.run else None) or {}  # fmt: skip
            preds = evaluation.file("preds.csv")
            images = sum(1 for _ in preds.open()) - 1 if preds.is_file() else None
            kind = "external validation" if evaluation.external else "evaluation"
            lines.append(
                f"- {evaluation.folder} ({kind}, found {evaluation.how}): split `{split}`"
                + (f", {images} images (preds.csv)" if images is not None else "")
                + (
                    f", data `{_short(data.get('_target_'))}` at `{data.get('root')}`"
                    if data
                    else ""
                )
            )
            if evaluation.external:
                lines += ["", f"External against internal AUROC ({evaluation.file(AUCS)}):", ""]
                rows = [[str(r["class"]), number(r["auroc"]), number(r["internal_auroc"]),
                         number(r.get("external_minus_internal"))]
                        for r in evaluation.aucs.to_dict("records")]  # fmt: skip
                lines += _table(["output", "AUROC", "internal AUROC", "external - internal"], rows)
                lines.append("")
            expert = _read_csv(evaluation.file("expert_aucs.csv"))
            if expert is not None and "auroc" in expert:
                lines += [
                    "",
                    f"Against radiologists' labels ({evaluation.file('expert_aucs.csv')}):",
                    "",
                ]
                rows = [[str(r["set"]), str(r["finding"]), count(r["n"]), number(r["auroc"]),
                         number(r.get("ci_low")), number(r.get("ci_high")),
                         number(r.get("nih_auroc")), number(r.get("gap"))]
                        for r in expert.to_dict("records")]  # fmt: skip
                lines += _table(["set", "finding", "images", "AUROC", "CI low", "CI high",
                                 "AUROC vs NIH labels", "gap"], rows)  # fmt: skip
                lines.append("")
        if not any(e.external for e in self.evaluations):
            lines.append(f"No external validation was found (no evaluation folder with "
                         f"internal_auroc given); run chexnet-evaluate ckpt={self.checkpoint} "
                         "data=<another dataset> data.root=... and pass its folder.")  # fmt: skip
        if not any(e.file("expert_aucs.csv").is_file() for e in self.evaluations):
            lines.append("No expert-label results were found (no expert_aucs.csv); run "
                         "chexnet-evaluate with expert_labels=... for them.")  # fmt: skip
        return lines

    def training_data(self) -> list[str]:
        data = (self.config or {}).get("data")
        if isinstance(data, Mapping):
            lines = [f"From {self.config_file} (`data`, as written):"]
            lines += _settings_lines(data, skip=MECHANICS)
        else:
            stored = self.stored.get("datamodule_hyper_parameters")
            if not stored:
                return [f"No training configuration was found in {self.run} (no "
                        "config_resolved.yaml or .hydra/config.yaml, and no data settings in "
                        f"{self.checkpoint.name})."]  # fmt: skip
            lines = [f"From the data settings stored in {self.checkpoint.name}:"]
            lines += _settings_lines(stored, skip=MECHANICS)
        trainer = (self.config or {}).get("trainer") or {}
        if isinstance(trainer, Mapping) and "max_epochs" in trainer:
            lines.append(f"- `trainer.max_epochs`: `{trainer['max_epochs']}`")
        return lines

    def ethics(self) -> list[str]:
        lines = []
        for evaluation in self.evaluations:
            table = _read_csv(evaluation.file("subgroups.csv"))
            if table is not None and "subgroup" in table:
                gaps = table[table["subgroup"] == GAP]
                if len(gaps):
                    lines += [f"AUROC gaps between patient groups (largest minus smallest, "
                              f"{evaluation.file('subgroups.csv')}):", ""]  # fmt: skip
                    rows = [[str(r["attribute"]), str(r["finding"]), number(r["auroc"]),
                             number(r.get("ci_low")), number(r.get("ci_high"))]
                            for r in gaps.to_dict("records")]  # fmt: skip
                    lines += _table(["attribute", "output", "gap", "CI low", "CI high"], rows)
                    lines.append("")
            under = _read_csv(evaluation.file("underdiagnosis.csv"))
            if under is not None and "underdiagnosis_rate" in under:
                lines += [f"Underdiagnosis (called No Finding while a finding is present; "
                          f"{evaluation.file('underdiagnosis.csv')}):", ""]  # fmt: skip
                rows = [[str(r["attribute"]), str(r["subgroup"]),
                         number(r["underdiagnosis_rate"]), str(r.get("note") or "")
                         if isinstance(r.get("note"), str) else ""]
                        for r in under.to_dict("records")]  # fmt: skip
                lines += _table(["attribute", "group", "underdiagnosis rate", "note"], rows)
                lines.append("")
        if not lines:
            where = self.main.folder if self.main else self.run
            lines.append(f"No subgroup evaluation was found in {where} (no subgroups.csv or "
                         "underdiagnosis.csv), so the model's differences between patient groups "
                         "are not known; run chexnet-evaluate on data with sex, age or view.")  # fmt: skip
        return lines

    def caveats(self) -> list[str]:
        lines = []
        if self.main is not None:
            undefined = [str(r["class"]) for r in self.main.aucs.to_dict("records")
                         if number(r["auroc"]) == "undefined"]  # fmt: skip
            if undefined:
                lines.append(f"- AUROC undefined in {self.main.file(AUCS)} (no positives or no "
                             f"negatives there): {', '.join(undefined)}.")  # fmt: skip
            lines.append(f"- The operating thresholds were chosen on this run's data "
                         f"({self.main.file(AUCS)}); on another hospital's images choose them "
                         "again with chexnet-evaluate on labelled local images.")  # fmt: skip
        else:
            lines.append(f"- {self.no_evaluation()}")
        for key, what, why in (
            ("ood", "out-of-distribution detector", "inputs unlike the training images are not "
             "flagged"),
            ("conformal", "conformal \"refer\" calibration", "no decision carries a guaranteed "
             "error rate"),
        ):  # fmt: skip
            state, source = self._state(key)
            if state is None:
                lines.append(f"- No {what} is recorded for this model (no `{key}` in "
                             f"{source}): {why}.")  # fmt: skip
            else:
                lines.append(f"- {what[0].upper() + what[1:]} (`{key}` in {source}):")
                lines += ["  " + line for line in _settings_lines(state)] if isinstance(
                    state, Mapping) else [f"  - `{state}`"]  # fmt: skip
        return lines

    def _state(self, key: str) -> tuple[Any, str]:
        if self.sidecar.get(key) is not None:
            return self.sidecar[key], f"the export's sidecar ({self.sidecar.get('file')}.json)"
        if self.stored.get(key) is not None:
            return self.stored[key], self.checkpoint.name
        where = " or ".join(filter(None, [
            "the export's sidecar" if self.sidecar else "", self.checkpoint.name]))  # fmt: skip
        return None, where


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1] if target else "not recorded"


def card_text(
    checkpoint: str | Path,
    sidecar: Mapping[str, Any] | None = None,
    thresholds: str | Path | None = None,
    evaluations: Sequence[str | Path] = (),
) -> str:
    """The text of ``MODEL_CARD.md`` for ``checkpoint`` (see the module's notes)."""
    checkpoint = Path(checkpoint).expanduser()
    return _Card(checkpoint, sidecar, find_evaluations(checkpoint, thresholds, evaluations)).text()


def write_model_card(
    checkpoint: str | Path,
    folder: str | Path,
    sidecar: Mapping[str, Any] | None = None,
    thresholds: str | Path | None = None,
    evaluations: Sequence[str | Path] = (),
) -> Path:
    """Write ``<folder>/MODEL_CARD.md`` atomically (``files.atomic_write``); returns its path."""
    return publish_card(folder, card_text(checkpoint, sidecar, thresholds, evaluations))


def publish_card(folder: str | Path, text: str) -> Path:
    """``text`` as ``<folder>/MODEL_CARD.md``, written atomically; returns its path."""
    path = Path(folder).expanduser() / CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        partial.write_text(text)
    log.info("model card → %s", path)
    return path


def model_card(
    model: str | Path,
    out: str | Path | None = None,
    evaluations: Sequence[str | Path] = (),
    thresholds: str | Path | None = None,
) -> Path:
    """Write ``MODEL_CARD.md`` for a trained model, from its run's files (as ``chexnet-export``
    writes it beside every export).

    Args:
        model: a checkpoint (``<run>/checkpoints/best.ckpt``), a run folder (its
            ``checkpoints/best.ckpt``), or an export (``.onnx``, ``.pt``, ``.safetensors`` with
            its sidecar; the run is found from the export's folder, as ``chexnet-export``'s
            default destination places it beside the checkpoint).
        out: the folder to write it in; default: beside ``model``.
        evaluations: other ``chexnet-evaluate`` output folders of this model to report (external
            validation, expert labels).
        thresholds: the ``aucs.csv`` whose evaluation the card reports first; default: the one
            beside the checkpoint or in its run folder (the commands' rule).

    Returns:
        The path of ``MODEL_CARD.md``.
    """
    from chexnet_pl.serving.sidecar import read_sidecar

    path = Path(model).expanduser()
    sidecar = None
    if path.is_dir():
        checkpoint = path / "checkpoints" / "best.ckpt"
        if not checkpoint.is_file():
            raise DataError(f"{path} has no checkpoints/best.ckpt; give the checkpoint itself")
    elif path.suffix.lower() in (".onnx", ".pt", ".safetensors"):
        sidecar = read_sidecar(path)
        checkpoint = path.with_name(Path(str(sidecar.get("checkpoint") or path.name)).name)
    elif path.is_file():
        checkpoint = path
    else:
        raise DataError(f"model file not found: {path} (a .ckpt, a run folder, or an export)")
    folder = Path(out).expanduser() if out else (path if path.is_dir() else path.parent)
    return write_model_card(checkpoint, folder, sidecar, thresholds, evaluations)
