"""Expert labels (``expert_labels=``): the output map from the shipped config, bad tables refused
with file, line and value, AUROCs equal to scikit-learn's on the real Google table beside NIH's
labels, a checkpoint's evaluation, and the command line."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA, compose_config, random_checkpoint
from sklearn.metrics import roc_auc_score

from chexnet_pl.data.nih import label_index
from chexnet_pl.data.nih_table import class_names, read_data_entry
from chexnet_pl.errors import ConfigError, DataError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.expert.labels import ExpertMap, read_expert_labels

GOOGLE_CSV = SHARED_DATA / "nih-expert" / "google2019_nih-chest-xray-labels.csv.gz"
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
    "Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id"
)
FINDINGS = ["Pneumothorax", "Nodule or mass", "Airspace opacity", "Fracture"]
SCORED = {  # the shipped default map, spelled out: what the test checks against
    "Pneumothorax": ["Pneumothorax"],
    "Nodule or mass": ["Nodule", "Mass"],
    "Airspace opacity": ["Consolidation", "Pneumonia", "Infiltration", "Edema"],
}


@pytest.fixture(scope="module")
def google_csv() -> Path:
    if not GOOGLE_CSV.is_file():
        pytest.skip(
            f"Google's expert labels not found at {GOOGLE_CSV} (../shared/data is only beside CI checkouts)"
        )
    return GOOGLE_CSV


def _row(
    image: str, patient: int, fracture="NO", ptx="NO", opacity="NO", nodule="NO", set_id="test"
) -> str:
    return (f"{image},No Finding,0,{patient},50,M,PA,2500,2048,0.168,0.168,"
            f"{fracture},{ptx},{opacity},{nodule},{set_id}")  # fmt: skip


def _small_table(path: Path, lines: list[str] | None = None) -> Path:
    rows = lines or [
        _row("00000001_000.png", 1, ptx="YES"),
        _row("00000002_000.png", 2, opacity="yes", set_id="val"),
        _row("00000003_000.png", 3, nodule="YES", fracture="YES"),
    ]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def test_the_shipped_map_overrides_and_bad_maps():
    cfg = compose_config("evaluate", None)
    mapping = ExpertMap.from_config(cfg.expert_map)
    assert mapping.names == FINDINGS
    assert {f: list(mapping.outputs(f)) for f in SCORED} == SCORED
    assert mapping.describe("Nodule or mass") == "max(Nodule, Mass)"
    assert mapping.describe("Fracture") == "not an output"
    # One finding changed from the command line (Hydra's dict syntax; the keys have spaces).
    cfg = compose_config(
        "evaluate", None, "expert_map={Airspace opacity: [Consolidation, Atelectasis]}"
    )
    changed = ExpertMap.from_config(cfg.expert_map)
    assert changed.outputs("Airspace opacity") == ("Consolidation", "Atelectasis")
    assert changed.outputs("Nodule or mass") == ("Nodule", "Mass")
    with pytest.raises(
        ConfigError, match=r"expert_map.Fracture='Fracture' is not a list of output names"
    ):
        ExpertMap.from_config({"Fracture": "Fracture"})
    with pytest.raises(ConfigError, match="lists an output twice"):
        ExpertMap.from_config({"Nodule or mass": ["Mass", "Mass"]})
    with pytest.raises(ConfigError, match="expert_map is empty"):
        ExpertMap.from_config({})
    with pytest.raises(
        ConfigError,
        match=r"expert_map.Airspace opacity names \['Lung Opacity'\], not outputs of preds.csv",
    ):
        ExpertMap.from_config({"Airspace opacity": ["Lung Opacity"]}).check_outputs(
            class_names(), "preds.csv"
        )


def test_reading_a_table_in_googles_layout(tmp_path):
    labels = read_expert_labels(_small_table(tmp_path / "g.csv"), FINDINGS)
    assert labels.index.tolist() == ["00000001_000.png", "00000002_000.png", "00000003_000.png"]
    assert labels["Set Id"].tolist() == ["test", "val", "test"]
    assert labels["Pneumothorax"].tolist() == [1, 0, 0] and labels["Airspace opacity"].tolist() == [
        0,
        1,
        0,
    ]
    assert labels["Fracture"].tolist() == [0, 0, 1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _truncated_gzip(path: Path) -> Path:
    data = gzip.compress(
        ("\n".join([HEADER] + [_row(f"{i:08d}_000.png", i) for i in range(2000)])).encode()
    )
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _small_table(p, [_row("a.png", 1), _row("b.png", 2, ptx="MAYBE")]),
         r"g.csv, line 3, column 'Pneumothorax': 'MAYBE' is not YES or NO \(1 such value"),
        (lambda p: _small_table(p, [_row("a.png", 1, nodule=""), _row("b.png", 2, nodule="")]),
         r"line 2, column 'Nodule or mass': blank is not YES or NO \(2 such value"),
        (lambda p: _small_table(p, [_row("a.png", 1), _row("b.png", 2, set_id="train")]),
         r"line 3, column 'Set Id': 'train' is not one of \['test', 'val'\]"),
        (lambda p: _small_table(p, [_row("a.png", 1), _row("a.png", 1)]),
         r"line 3: image 'a.png' has more than one row"),
        (lambda p: _small_table(p, [_row("a.png", 1), _row("b.png", 2) + ",NO"]),
         r"cannot parse .*g.csv as a CSV: .*Expected 16 fields in line 3, saw 17"),
        (lambda p: _write(p, HEADER.replace(",Airspace opacity", "") + "\n" + _row("a.png", 1) + "\n"),
         r"the rows have more fields than the header \(15 names\)"),
        (lambda p: _write(p, HEADER.replace("Nodule or mass", "Nodule") + "\n" + _row("a.png", 1) + "\n"),
         r"lacks column\(s\) \['Nodule or mass'\]; its columns are"),
        (lambda p: _write(p, HEADER + "\n"), "has a header but no rows"),
        (lambda p: _write(p, ""), "cannot parse"),
        (lambda p: _truncated_gzip(p.with_suffix(".csv.gz")), r"cannot read .*g.csv.gz \(damaged or truncated\?\)"),
        (lambda p: p.with_name("absent.csv"), r"expert labels file not found: .*absent.csv \(expert_labels=\)"),
    ],
    ids=["yes-no", "blank", "set", "repeated", "extra-field", "header-short", "column", "no-rows",
         "empty", "truncated-gz", "absent"],
)  # fmt: skip
def test_bad_expert_tables_name_the_file_line_and_value(tmp_path, make, message):
    path = make(tmp_path / "g.csv")
    with pytest.raises(DataError, match=message):
        read_expert_labels(path, FINDINGS)


def test_the_real_google_table(google_csv, nih_meta):
    labels = read_expert_labels(google_csv, FINDINGS)
    assert len(labels) == 4376 and labels["Set Id"].value_counts().to_dict() == {
        "val": 2414,
        "test": 1962,
    }
    assert labels[FINDINGS].sum().to_dict() == {
        "Pneumothorax": 238, "Nodule or mass": 605, "Airspace opacity": 2166, "Fracture": 186,
    }  # fmt: skip
    # The Evaluation page's table (docs/evaluation.md) for the default Airspace opacity map: NIH's labels mapped the same way.
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz")).loc[
        labels.index
    ]
    nih = truth[SCORED["Airspace opacity"]].max(axis=1).to_numpy() > 0.5
    expert = labels["Airspace opacity"].to_numpy() > 0.5
    assert nih.sum() == 1266
    assert round(nih[expert].mean(), 3) == 0.443 and round((~nih[~expert]).mean(), 3) == 0.861
    assert round(expert[nih].mean(), 3) == 0.758


def _label_scores(truth: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Noisy scores derived from NIH's labels, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    labels = truth[class_names()].to_numpy()
    scores = np.round(0.3 * labels + 0.7 * rng.random(labels.shape), 3)
    table = pd.DataFrame(scores, columns=[f"prob_{c}" for c in class_names()])
    table.insert(0, "Image Index", truth.index)
    return table


def _check_against_scikit_learn(table, preds, expert, truth, images):
    """Every scored row equals scikit-learn on the same images, positives and max-of-outputs scores."""
    scores = preds.set_index("Image Index")
    for row in table.itertuples(index=False):
        members = (
            images
            if row.set == "all"
            else images[expert.loc[images, "Set Id"].eq(row.set).to_numpy()]
        )
        assert row.n == len(members)
        assert row.positives == expert.loc[members, row.finding].sum()
        if row.finding not in SCORED:
            assert (
                row.scored_by == "not an output" and np.isnan(row.auroc) and np.isnan(row.nih_auroc)
            )
            continue
        outputs = SCORED[row.finding]
        score = scores.loc[members, [f"prob_{o}" for o in outputs]].max(axis=1)
        nih = truth.loc[members, outputs].max(axis=1)
        assert row.nih_positives == nih.sum()
        for auroc, low, high, labels in (
            (row.auroc, row.ci_low, row.ci_high, expert.loc[members, row.finding]),
            (row.nih_auroc, row.nih_ci_low, row.nih_ci_high, nih),
        ):
            if labels.nunique() < 2:  # no positive or no negative: undefined, not 0.5
                assert np.isnan(auroc) and np.isnan(low)
                continue
            assert abs(auroc - roc_auc_score(labels, score)) < 1e-6
            assert low <= auroc <= high
        if not np.isnan(row.gap):
            assert row.gap == pytest.approx(row.auroc - row.nih_auroc, abs=1e-12)
            assert row.gap_ci_low <= row.gap <= row.gap_ci_high


def test_aurocs_equal_scikit_learn_on_the_real_google_table(google_csv, nih_meta, tmp_path, caplog):
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz"))
    expert = read_expert_labels(google_csv, FINDINGS)
    left_out = expert.index[expert["Set Id"] == "val"][
        :40
    ]  # predicted by no one: counted, not hidden
    others = truth.index[~truth.index.isin(expert.index)][:500]  # not expert-labelled: not scored
    predicted = expert.index.drop(left_out).append(others)
    preds_path = tmp_path / "preds.csv"
    (preds := _label_scores(truth.loc[predicted], 0)).to_csv(preds_path, index=False)
    cfg = compose_config("evaluate", tmp_path / "out", f"preds={preds_path}", f"data.root={nih_meta}",
                         f"expert_labels={google_csv}", "evaluation.bootstrap_samples=200",
                         "evaluation.plots=false", "evaluation.subgroups=[]")  # fmt: skip
    with caplog.at_level(logging.INFO):
        metrics = evaluate(cfg)
    table = pd.read_csv(tmp_path / "out" / "expert_aucs.csv")
    assert list(table.columns[:7]) == [
        "set",
        "finding",
        "scored_by",
        "n",
        "positives",
        "auroc",
        "ci_low",
    ]
    assert list(table["set"].unique()) == ["test", "val", "all"]
    assert list(table["finding"].unique()) == FINDINGS
    _check_against_scikit_learn(table, preds, expert, truth, expert.index.drop(left_out))
    fracture = table[(table.finding == "Fracture") & (table.set == "all")].iloc[0]
    assert fracture.positives == 186 - expert.loc[left_out, "Fracture"].sum()
    assert (
        "40 of 4376 expert-labelled images of google2019_nih-chest-xray-labels.csv.gz are not in "
        "the predictions and are not scored (test 0, val 40): 40 in the metadata but not predicted"
        in caplog.text
    )
    assert (
        "4336 of 4376 images are in the predictions (test 1962 of 1962, val 2374 of 2414)"
        in caplog.text
    )
    assert "Fracture <- not an output" in caplog.text and "AUROC NIH labels (95% CI)" in caplog.text
    all_ptx = table[(table.finding == "Pneumothorax") & (table.set == "all")].iloc[0]
    assert metrics["expert/all/auroc_Pneumothorax"] == pytest.approx(all_ptx.auroc)
    assert metrics["expert/test/nih_auroc_Nodule_or_mass"] > 0.7  # label-derived scores
    assert "expert/all/auroc_Fracture" not in metrics


@pytest.mark.slow  # over ~3 s: the slow tier keeps make test-fast under 3 min
def test_expert_labels_with_no_predicted_image_or_an_unknown_output(google_csv, nih_meta, tmp_path):
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz"))
    elsewhere = truth.index[~truth.index.isin(read_expert_labels(google_csv, FINDINGS).index)][:300]
    _label_scores(truth.loc[elsewhere], 1).to_csv(preds := tmp_path / "preds.csv", index=False)
    common = [f"preds={preds}", f"data.root={nih_meta}", f"expert_labels={google_csv}",
              "evaluation.bootstrap_samples=0", "evaluation.plots=false", "evaluation.subgroups=[]"]  # fmt: skip
    with pytest.raises(
        DataError, match=r"none of the 4376 images of .*google2019.* is in the predictions"
    ):
        evaluate(compose_config("evaluate", tmp_path / "a", *common))
    with pytest.raises(
        ConfigError,
        match=r"expert_map.Fracture names \['Fracture'\], not outputs of the predictions file",
    ):
        evaluate(
            compose_config("evaluate", tmp_path / "b", *common, "expert_map={Fracture: [Fracture]}")
        )


def test_a_checkpoint_is_scored_on_the_splits_it_did_not_learn_from(
    synthetic_root, tmp_path, caplog
):
    """With ckpt=, the evaluated split and validation are scored; images of the train split are
    not predicted, and the warning says so."""
    table = read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv")
    test_names = set((synthetic_root / "test_list.txt").read_text().split())
    rng = np.random.default_rng(0)
    lines = [
        _row(name, patient, ptx=rng.choice(["YES", "NO"]), opacity=rng.choice(["YES", "NO"]),
             nodule=rng.choice(["YES", "NO"]), set_id="test" if name in test_names else "val")
        for name, patient in zip(table["Image Index"], table["Patient ID"], strict=True)
    ]  # fmt: skip
    google = _small_table(tmp_path / "expert.csv", lines)
    ckpt = random_checkpoint(tmp_path / "model.ckpt", image_size=32, root=str(synthetic_root))
    cfg = compose_config("evaluate", tmp_path / "out", f"ckpt={ckpt}", f"expert_labels={google}",
                         "data.num_workers=0", "evaluation.bootstrap_samples=50",
                         "evaluation.plots=false")  # fmt: skip
    with caplog.at_level(logging.INFO):
        evaluate(cfg)
    preds = pd.concat([pd.read_csv(tmp_path / "out" / f) for f in ("preds.csv", "preds_val.csv")])
    expert = read_expert_labels(google, FINDINGS)
    truth = label_index(table)
    result = pd.read_csv(tmp_path / "out" / "expert_aucs.csv")
    _check_against_scikit_learn(result, preds, expert, truth, pd.Index(preds["Image Index"]))
    train = len(table) - len(preds)
    assert (
        f"{train} in the model's train split (not predicted: the model learnt from them)"
        in caplog.text
    )


def _command(*args: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("chexnet-evaluate")
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_command_writes_expert_aucs_and_refuses_a_bad_table(google_csv, nih_meta, tmp_path):
    truth = label_index(read_data_entry(nih_meta / "Data_Entry_2017_v2020.csv.gz"))
    expert = read_expert_labels(google_csv, FINDINGS)
    _label_scores(truth.loc[expert.index], 2).to_csv(preds := tmp_path / "preds.csv", index=False)
    common = [f"preds={preds}", f"data.root={nih_meta}", "evaluation.bootstrap_samples=100",
              "evaluation.plots=false"]  # fmt: skip
    run = _command(*common, f"expert_labels={google_csv}", f"hydra.run.dir={tmp_path / 'out'}")
    assert run.returncode == 0, run.stderr[-2000:]
    table = pd.read_csv(tmp_path / "out" / "expert_aucs.csv")
    assert len(table) == 12 and table.loc[table.set == "all", "n"].eq(4376).all()
    assert table.loc[table.set == "all", "positives"].tolist() == [238, 605, 2166, 186]
    assert table.loc[table.finding != "Fracture", "auroc"].between(0.5, 1).all()
    log = (tmp_path / "out" / "evaluate.log").read_text()
    assert (
        "Expert labels (google2019_nih-chest-xray-labels.csv.gz" in log and "not an output" in log
    )
    damaged = tmp_path / "damaged.csv"
    lines = gzip.decompress(google_csv.read_bytes()).decode().splitlines()
    lines[101] = lines[101].replace(",NO,", ",N0,", 1)  # a typo, as a hand-edited file may have
    damaged.write_text("\n".join(lines))
    run = _command(*common, f"expert_labels={damaged}", f"hydra.run.dir={tmp_path / 'bad'}")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert (
        f"{damaged}, line 102, column 'Fracture': 'N0' is not YES or NO" in run.stdout + run.stderr
    )


@pytest.mark.slow
def test_expert_table_and_aurocs_go_to_wandb(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    truth = label_index(read_data_entry(synthetic_root / "Data_Entry_2017_v2020.csv"))
    _label_scores(truth, 3).to_csv(preds := tmp_path / "preds.csv", index=False)
    rng = np.random.default_rng(1)
    lines = [_row(name, patient, ptx=rng.choice(["YES", "NO"]), nodule=rng.choice(["YES", "NO"]),
                  opacity=rng.choice(["YES", "NO"]), set_id=rng.choice(["test", "val"]))
             for name, patient in zip(truth.index, truth["Patient ID"], strict=True)]  # fmt: skip
    google = _small_table(tmp_path / "expert.csv", lines)
    cfg = compose_config("evaluate", tmp_path / "out", f"preds={preds}", f"data.root={synthetic_root}",
                         f"expert_labels={google}", "wandb=true", "evaluation.bootstrap_samples=20",
                         "evaluation.plots=false", "evaluation.subgroups=[]")  # fmt: skip
    summaries = _record_summaries(monkeypatch)
    metrics = evaluate(cfg)
    (run,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    (logged,) = run.glob("files/media/table/expert/aucs_*.table.json")
    content = json.loads(logged.read_text())
    assert content["columns"][:3] == ["set", "finding", "scored_by"] and len(content["data"]) == 12
    assert summaries[0]["expert/all/auroc_Nodule_or_mass"] == pytest.approx(
        metrics["expert/all/auroc_Nodule_or_mass"]
    )


def _record_summaries(monkeypatch) -> list[dict]:
    """Each W&B run's summary as it stands when the run finishes (the offline record file is
    written by another process, so it is not read back here)."""
    import wandb

    summaries, real_init = [], wandb.init

    def init(*args, **kwargs):
        run = real_init(*args, **kwargs)
        real_finish = run.finish

        def finish(*finish_args, **finish_kwargs):
            summaries.append({key: run.summary[key] for key in run.summary.keys()})
            return real_finish(*finish_args, **finish_kwargs)

        run.finish = finish
        return run

    monkeypatch.setattr(wandb, "init", init)
    return summaries
