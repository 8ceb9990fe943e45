"""One threshold rule for every command: on the same checkpoint, predict, visualize, serve (a
real server on loopback) and export call each class at the thresholds evaluate chose and wrote to
the run's aucs.csv; without one, 0.5 with a one-line warning. Label names are accepted with a space
or an underscore."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import uvicorn
from conftest import compose_config, random_checkpoint

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.errors import DataError
from chexnet_pl.evaluate import evaluate
from chexnet_pl.evaluation.thresholds import (
    operating_thresholds,
    read_thresholds,
)
from chexnet_pl.label_sets import label_key, resolve_label
from chexnet_pl.predict import predict
from chexnet_pl.serving.app import Limits, create_app
from chexnet_pl.serving.backends import load_backend
from chexnet_pl.serving.predictor import Predictor
from chexnet_pl.serving.sidecar import find_thresholds
from chexnet_pl.visualize import visualize

NAMES = class_names()


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, synthetic_root) -> Path:
    """A run folder as ``train`` leaves it: checkpoints/best.ckpt, and aucs.csv from ``evaluate``
    of that checkpoint written into the run folder (thresholds chosen on validation)."""
    run = tmp_path_factory.mktemp("run")
    checkpoint = random_checkpoint(run / "checkpoints" / "best.ckpt", image_size=32,
                                   root=str(synthetic_root), split={"method": "official", "seed": 0})  # fmt: skip
    cfg = compose_config("evaluate", run, f"ckpt={checkpoint}", "evaluation.bootstrap_samples=0",
                         "evaluation.plots=false", "evaluation.subgroups=[]")  # fmt: skip
    evaluate(cfg)
    return run


def evaluated_thresholds(run: Path) -> np.ndarray:
    """aucs.csv's thresholds in class order; a class without one (no positives on validation)
    stays NaN: no command calls it at 0.5."""
    table = pd.read_csv(run / "aucs.csv", index_col="class")
    return table.loc[NAMES, "threshold"].to_numpy()


def table_thresholds(path: Path) -> np.ndarray:
    table = pd.read_csv(path).set_index("finding")
    return table.loc[NAMES, "threshold"].to_numpy()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def served_thresholds(checkpoint: Path, image: Path) -> tuple[dict, dict]:
    """GET /model and POST /predict of the real app on loopback (uvicorn in a thread)."""
    backend, card = load_backend(checkpoint)
    predictor = Predictor(backend, card)
    config = uvicorn.Config(
        create_app(predictor, Limits(2**20, 10**6)),
        host="127.0.0.1",
        port=free_port(),
        log_config=None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{config.port}"
        model = requests.get(f"{url}/model", timeout=30).json()
        answer = requests.post(f"{url}/predict", data=image.read_bytes(),
                               params={"overlay": "Pleural Thickening"}, timeout=60)  # fmt: skip
        assert answer.status_code == 200, answer.text
        return model, answer.json()
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow  # over ~8 s: the slow tier keeps make test-fast under 3 min
def test_every_command_calls_classes_at_the_thresholds_evaluate_chose(
    evaluated_run, synthetic_root, tmp_path, caplog
):
    checkpoint = evaluated_run / "checkpoints" / "best.ckpt"
    expected = evaluated_thresholds(evaluated_run)
    assert len(set(np.round(expected, 6))) > 3  # chosen per class, not one value for all
    image = sorted((synthetic_root / "images").iterdir())[0]
    with caplog.at_level(logging.INFO):
        predict(compose_config("predict", tmp_path / "p", f"ckpt={checkpoint}", f"image={image}"))
    assert table_thresholds(tmp_path / "p" / f"{image.stem}.csv") == pytest.approx(
        expected, nan_ok=True
    )
    # the output says which file: the run's aucs.csv, found in the checkpoint's run folder
    assert (
        f"thresholds: {evaluated_run / 'aucs.csv'} (in the checkpoint's run folder)" in caplog.text
    )
    visualize(compose_config("visualize", tmp_path / "v", f"ckpt={checkpoint}", "label=Effusion",
                             "n=2"))  # fmt: skip
    tables = sorted((tmp_path / "v").glob("*.csv"))
    assert tables and all(
        table_thresholds(t) == pytest.approx(expected, nan_ok=True) for t in tables
    )
    model, answer = served_thresholds(checkpoint, image)
    served = [np.nan if model["thresholds"][n] is None else model["thresholds"][n] for n in NAMES]
    assert served == pytest.approx(expected, nan_ok=True)
    answered = {r["finding"]: np.nan if r["threshold"] is None else r["threshold"]
                for r in answer["findings"]}  # fmt: skip
    assert answered == pytest.approx(dict(zip(NAMES, expected, strict=True)), nan_ok=True)
    assert list(answer["overlays"]) == ["Pleural_Thickening"]  # asked for with a space
    # the page shows which file, not where it is on the server
    assert model["thresholds_source"] == (
        "aucs.csv (in the checkpoint's run folder), Youden's J on the validation split"
    )
    assert model["checkpoint"] == "best.ckpt" and str(evaluated_run) not in str(model)
    values, source = find_thresholds(checkpoint, None, NAMES)  # what export writes
    assert values == pytest.approx(expected, nan_ok=True)
    assert source == str(evaluated_run / "aucs.csv")


def test_an_undefined_threshold_gives_no_verdict_and_a_degenerate_one_is_flagged(
    evaluated_run, synthetic_root, tmp_path, caplog
):
    """The random model's validation split has classes without positives (undefined: never
    0.5) and Youden thresholds of 1.000 that no positive reaches (degenerate): aucs.csv says how
    each was chosen and why it is flagged; predict's table, its console, the overlay's table
    (its CSV), the page's JSON and GET /model carry no verdict for the first and flag the
    second."""
    aucs = pd.read_csv(evaluated_run / "aucs.csv", index_col="class").loc[NAMES]
    assert set(aucs["threshold_rule"]) == {"youden"} and set(aucs["threshold_split"]) == {"val"}
    undefined = aucs.index[aucs["threshold"].isna()].tolist()
    degenerate = aucs.index[aucs["threshold_status"].str.startswith("degenerate")].tolist()
    assert undefined and degenerate, aucs["threshold_status"]
    for name in undefined:
        assert aucs.at[name, "threshold_status"] == "undefined: no positives on val"
        assert aucs.at[name, "threshold_positives"] == 0
    assert (aucs.loc[degenerate, "sensitivity"].notna()).all()
    checkpoint = evaluated_run / "checkpoints" / "best.ckpt"
    image = sorted((synthetic_root / "images").iterdir())[0]
    with caplog.at_level(logging.INFO):
        predict(compose_config("predict", tmp_path / "p", f"ckpt={checkpoint}", f"image={image}"))
    table = pd.read_csv(tmp_path / "p" / f"{image.stem}.csv", keep_default_na=False)
    table = table.set_index("finding")
    for name in undefined:  # no verdict: blank, not False (0.5 would have given one)
        assert table.at[name, "threshold"] == "" and table.at[name, "above_threshold"] == ""
        assert table.at[name, "threshold_note"] == "undefined: no positives on val"
    for name in degenerate:
        assert table.at[name, "threshold_note"].startswith("degenerate: sensitivity 0 on val")
    printed = caplog.text.replace("_", " ")
    assert all(f"{n.replace('_', ' ')}" in printed for n in undefined)
    assert (
        "undefined: no positives on val" in printed
        and "Youden's J on the validation split" in printed
    )
    model, answer = served_thresholds(checkpoint, image)
    rows = {r["finding"]: r for r in answer["findings"]}
    for name in undefined:
        assert rows[name]["threshold"] is None and rows[name]["above_threshold"] is None
        assert rows[name]["threshold_note"] == "undefined: no positives on val"
        assert model["thresholds"][name] is None
    for name in degenerate:
        assert rows[name]["threshold_note"].startswith("degenerate")
        assert model["threshold_notes"][name].startswith("degenerate")
    chosen = model["thresholds_chosen"]
    assert chosen["rule"] == "Youden's J on the validation split"
    assert chosen["positives"] == aucs["threshold_positives"].astype(int).tolist()
    assert answer["thresholds_chosen"] == chosen


def test_without_an_aucs_csv_every_class_is_at_one_half_with_one_warning(tmp_path, caplog):
    checkpoint = random_checkpoint(tmp_path / "lonely" / "best.ckpt", image_size=32)
    with caplog.at_level(logging.INFO):
        thresholds = operating_thresholds(checkpoint, None, NAMES)
    assert thresholds.values == (0.5,) * 15 and thresholds.source is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert "no aucs.csv beside" in warnings[0].getMessage() and "0.5" in warnings[0].getMessage()


def test_an_explicit_file_wins_and_names_match_with_a_space_or_an_underscore(
    evaluated_run, tmp_path
):
    written = pd.read_csv(evaluated_run / "aucs.csv")
    written["class"] = written["class"].str.replace("_", " ")  # as a spreadsheet might save it
    written.loc[written["class"] == "Pleural Thickening", "threshold"] = 0.123
    given = tmp_path / "mine.csv"
    written.to_csv(given, index=False)
    thresholds = operating_thresholds(evaluated_run / "checkpoints" / "best.ckpt", given, NAMES)
    assert thresholds.source == given and thresholds.found == "given as thresholds="
    assert thresholds.values[NAMES.index("Pleural_Thickening")] == 0.123
    assert resolve_label("Pleural Thickening", NAMES) == "Pleural_Thickening"
    assert resolve_label("pleural_thickening", NAMES) == "Pleural_Thickening"
    assert (
        resolve_label("No_Finding", NAMES) == "No Finding" and resolve_label("Flu", NAMES) is None
    )
    assert label_key("Pleural  Thickening") == label_key("Pleural_Thickening")
    broken = tmp_path / "broken.csv"
    written.drop(columns="threshold").to_csv(broken, index=False)
    with pytest.raises(DataError, match="no 'class' and 'threshold' columns"):
        read_thresholds(broken, NAMES)
    written.loc[0, "threshold"] = 7
    written.to_csv(broken, index=False)
    with pytest.raises(DataError, match="the threshold of Atelectasis is 7"):
        read_thresholds(broken, NAMES)


def test_visualize_takes_a_label_with_a_space(evaluated_run, tmp_path):
    checkpoint = evaluated_run / "checkpoints" / "best.ckpt"
    out = visualize(compose_config("visualize", tmp_path, f"ckpt={checkpoint}",
                                   "label=Pleural Thickening", "n=1"))  # fmt: skip
    assert len(list(out.glob("*_Pleural_Thickening.png"))) == 1
