"""MODEL_CARD.md (serving.model_card): written by every export format and by
``chexnet_pl.model_card``, in Mitchell et al.'s sections, its numbers those of the run's files
(a real evaluation of real NIH sample images by ``chexnet_pl.evaluate``, the shipped train config
composed by Hydra), a section without data saying so, and the export sidecar's state (``ood``,
``conformal``, whatever its builder adds) carried into the card and the safetensors sidecar."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import compose_config, random_checkpoint
from omegaconf import OmegaConf

import chexnet_pl
from chexnet_pl.model_identity import of_parts
from chexnet_pl.serving.export import export_checkpoint
from chexnet_pl.serving.model_card import CARD_FILE, SECTIONS, card_text, number
from chexnet_pl.serving.sidecar import read_sidecar

SIZE = 64


def nih_split(nih_sample: Path, name: str) -> list[Path]:
    listed = (nih_sample / name).read_text().split()
    return sorted(
        nih_sample / "images" / n for n in listed if (nih_sample / "images" / n).is_file()
    )


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, nih_sample) -> Path:
    """A training run's layout around a ResNet-18 checkpoint: ``.hydra/config.yaml`` (the shipped
    train config, composed), ``model.json``, and the files of a real evaluation on the NIH
    sample's official test images (thresholds chosen on its train_val images, a temperature
    calibration, subgroups by sex, age and view)."""
    run = tmp_path_factory.mktemp("card") / "run"
    checkpoint = random_checkpoint(run / "checkpoints" / "best.ckpt", "resnet18", SIZE)
    config = compose_config("train", run, "experiment=demo", f"data.root={nih_sample}")
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(config, run / ".hydra" / "config.yaml")
    model = chexnet_pl.load(checkpoint)
    of_parts("resnet18", model.class_names, SIZE, checkpoint).write(run)

    def table(paths: list[Path]) -> pd.DataFrame:
        return model.predict(paths).drop(columns=[f"above_{n}" for n in model.class_names])

    test = table(nih_split(nih_sample, "test_list.txt"))
    val = table(nih_split(nih_sample, "train_val_list.txt"))
    result = chexnet_pl.evaluate(
        test,
        nih_sample,
        val,
        bootstrap_samples=50,
        plots=False,
        calibrate="temperature",
        min_subgroup_images=2,
        min_subgroup_positives=1,  # 17 test images: gaps to compare
    )
    result.write(run)
    return run


def sections(text: str) -> dict[str, str]:
    """``## title`` → its text."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def markdown_rows(text: str, first_header: str) -> list[list[str]]:
    """The rows of the first Markdown table whose header starts with ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


# ONNX export (~9 s) runs with the slow tier.
@pytest.mark.parametrize(
    "fmt", [pytest.param("onnx", marks=pytest.mark.slow), "torchscript", "safetensors"]
)
def test_every_export_format_writes_a_model_card_with_the_sections(evaluated_run, tmp_path, fmt):
    out = export_checkpoint(evaluated_run / "checkpoints" / "best.ckpt", fmt, out=tmp_path / "x/")
    card_file = out.parent / CARD_FILE
    assert card_file.is_file()
    text = card_file.read_text()
    assert list(sections(text)) == list(SECTIONS)  # Mitchell et al.'s, in their order
    sidecar = read_sidecar(out)
    assert f"`{fmt}` (`{out.name}`, SHA-256 `{sidecar['model_sha256']}`)" in text
    assert f"Checkpoint SHA-256: `{sidecar['checkpoint_sha256']}`" in text
    fitted = json.loads((evaluated_run / "calibration.json").read_text())
    assert sidecar["calibration"] == {**fitted, "file": "calibration.json", "applied": False}
    assert not list(out.parent.glob("*.partial"))  # written whole (files.atomic_write)


def test_the_cards_numbers_are_the_run_files(evaluated_run):
    text = chexnet_pl.model_card(evaluated_run).read_text()
    assert (evaluated_run / CARD_FILE).is_file()  # default: beside the run folder given
    parts = sections(text)
    aucs = pd.read_csv(evaluated_run / "aucs.csv").set_index("class")
    rows = markdown_rows(parts["Metrics"], "output")
    header = next(line for line in parts["Metrics"].splitlines() if line.startswith("| output |"))
    assert header.split(" | ")[1:4] == ["AUROC", "95% CI low", "95% CI high"]
    assert [r[0] for r in rows] == list(aucs.index)  # every output and the mean, in order
    for row in rows:
        line = aucs.loc[row[0]]
        assert row[1] == number(line["auroc"])
        assert row[2] == number(line["ci_low"]) and row[3] == number(line["ci_high"])
        assert row[6] == number(line["threshold"])
        assert row[9] == number(line["ece"]) and row[10] == number(line["brier"])
    assert any(number(v) != "undefined" for v in aucs["ci_low"])  # real intervals were compared
    assert "chosen by Youden's J on the validation split" in parts["Metrics"]
    assert "`temperature` on" in parts["Metrics"]  # calibration.json's method
    calibration = json.loads((evaluated_run / "calibration.json").read_text())
    assert f"`temperature` on {calibration['fitted_on']}" in parts["Metrics"]
    # Subgroup gaps: subgroups.csv's gap rows, in the card as the file has them.
    subgroups = pd.read_csv(evaluated_run / "subgroups.csv")
    gaps = subgroups[subgroups["subgroup"] == "gap (max - min)"]
    assert len(gaps)
    shown = markdown_rows(parts["Ethical considerations"], "attribute")
    assert [(r[0], r[1], r[2]) for r in shown] == [
        (str(g.attribute), str(g.finding), number(g.auroc)) for g in gaps.itertuples()
    ]
    assert "sex" in parts["Factors"] and "No subgroup evaluation" not in parts["Factors"]
    # The training data: the composed config's data section, as written.
    assert (
        f"`root`: `{OmegaConf.load(evaluated_run / '.hydra' / 'config.yaml').data.root}`"
        in (parts["Training data"])
    )


def test_sections_without_data_say_so(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "bare" / "best.ckpt", "resnet18", SIZE)
    out = export_checkpoint(checkpoint, "torchscript")
    parts = sections((out.parent / CARD_FILE).read_text())
    expected = (
        f"No evaluation of this model was found in {checkpoint.parent} (no aucs.csv beside "
        f"best.ckpt or in its run folder); run chexnet-evaluate ckpt={checkpoint}"
    )
    for section in ("Metrics", "Evaluation data", "Caveats and recommendations"):
        assert expected in parts[section], section
    assert "|" not in parts["Metrics"]  # no table invented
    assert "No subgroup evaluation of this model was found" in parts["Factors"]
    assert "No subgroup evaluation was found" in parts["Ethical considerations"]
    assert "No out-of-distribution detector is recorded" in parts["Caveats and recommendations"]
    assert 'No conformal "refer" calibration is recorded' in parts["Caveats and recommendations"]


def test_a_damaged_run_file_stops_the_export_before_anything_is_written(tmp_path):
    checkpoint = random_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt", "resnet18", SIZE)
    (tmp_path / "run" / "model.json").write_text('{"backbone": "resnet18", ')  # cut short
    (tmp_path / "out").mkdir()
    with pytest.raises(chexnet_pl.errors.DataError, match=r"run/model.json is damaged"):
        export_checkpoint(checkpoint, "torchscript", out=tmp_path / "out/")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_the_sidecars_state_flows_into_the_safetensors_sidecar_and_the_card(
    evaluated_run, tmp_path, monkeypatch
):
    """Whatever the sidecar builder adds (here an OOD state; the conformal rule is the run's
    own) is in the safetensors sidecar and in the card, key by key."""
    from chexnet_pl.serving import export

    real = export.model_description

    def with_state(*args, **kwargs):
        return {
            **real(*args, **kwargs),
            "ood": {"method": "mahalanobis", "threshold": 12.5, "false_alarm_rate": 0.05},
        }

    monkeypatch.setattr(export, "model_description", with_state)
    out = export_checkpoint(
        evaluated_run / "checkpoints" / "best.ckpt", "safetensors", out=tmp_path / "m.safetensors"
    )
    sidecar = read_sidecar(out)
    assert sidecar["ood"]["threshold"] == 12.5 and sidecar["conformal"]["alpha"] == 0.1
    caveats = sections((tmp_path / CARD_FILE).read_text())["Caveats and recommendations"]
    assert "- `method`: `mahalanobis`" in caveats and "- `threshold`: `12.5`" in caveats
    # the conformal rule is the run's own conformal.json (evaluate wrote it), key by key
    rule = json.loads((evaluated_run / "conformal.json").read_text())
    assert sidecar["conformal"]["classes"] == rule["classes"]
    assert (
        f"- `alpha`: `{rule['alpha']}`" in caveats
        and "- `classes.Atelectasis.n_positive`" in caveats
    )
    assert "No out-of-distribution detector" not in caveats
    # The API on the export (away from its run: the sidecar's state, no evaluation found).
    again = chexnet_pl.model_card(out, out=tmp_path / "api")
    assert again == tmp_path / "api" / CARD_FILE
    caveats = sections(again.read_text())["Caveats and recommendations"]
    assert "- `method`: `mahalanobis`" in caveats and "No evaluation of this model" in caveats


def test_external_and_expert_folders_given_are_reported(evaluated_run, tmp_path):
    """An evaluation folder given with ``evaluations=`` whose aucs.csv has internal_auroc (an
    external validation) is shown beside the internal AUROC, its numbers the file's."""
    external = tmp_path / "external"
    external.mkdir()
    aucs = pd.read_csv(evaluated_run / "aucs.csv")
    aucs.insert(2, "internal_auroc", aucs["auroc"] * 0.9)
    aucs.insert(3, "external_minus_internal", aucs["auroc"] - aucs["internal_auroc"])
    aucs.to_csv(external / "aucs.csv", index=False)
    text = card_text(evaluated_run / "checkpoints" / "best.ckpt", evaluations=[external])
    rows = markdown_rows(sections(text)["Evaluation data"], "output")
    assert [r[2] for r in rows] == [number(v) for v in aucs["internal_auroc"]]
    assert "No external validation was found" not in text
    with pytest.raises(chexnet_pl.errors.DataError, match="evaluation folder not found: .*nowhere"):
        card_text(evaluated_run / "checkpoints" / "best.ckpt", evaluations=[tmp_path / "nowhere"])
