"""Heat maps (CAM and Grad-CAM), overlays, prediction tables, the per-epoch callback, and the
predict / visualize / localize commands — on a model that really learnt the synthetic lesions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config, make_model
from PIL import Image

from chexnet_pl.data.nih_table import class_names
from chexnet_pl.localization import heatmap_boxes, iobb, iou, read_bbox_list, score_box
from chexnet_pl.localize import localize
from chexnet_pl.models.module import CheXNetModule
from chexnet_pl.train import train
from chexnet_pl.visualization.figures import overlay, prediction_table
from chexnet_pl.visualization.heatmaps import (
    GRAD_METHODS,
    class_activation_maps,
    grad_cam,
    heatmaps,
)

REPO = Path(__file__).resolve().parents[1]


compose_task = compose_config


def test_cam_is_the_classifier_at_every_position():
    """Mean over positions of the raw CAM + bias = the logit: CAM reads the head exactly."""
    model = make_model().eval()
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    with torch.inference_mode():
        features = model.net.forward_features(model.net.prepare_input(images))
        raw = torch.einsum("kc,bchw->bkhw", model.net.classifier.weight, features)
        logits = model(images)
    torch.testing.assert_close(
        raw.mean((-2, -1)) + model.net.classifier.bias, logits, atol=1e-4, rtol=1e-4
    )
    maps = class_activation_maps(model.net, images)
    assert maps.shape == (2, 15, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_cam_equals_the_classifier_weights_times_the_feature_map():
    """Each class's map computed here on its own (Σ_c w_kc · f_c at each position, then scaled
    to [0, 1] per map), on a ResNet-18 whose head has known weights: class 0 reads one feature
    channel, class 1 the same channel negated, so a sign error swaps them."""
    torch.manual_seed(0)
    model = make_model(backbone="resnet18", class_names=["A", "B", "C"]).eval()
    images = torch.randint(0, 256, (2, 1, 128, 128), dtype=torch.uint8)
    with torch.inference_mode():
        features = model.net.forward_features(model.net.prepare_input(images)).double().numpy()
    spread = features.std(axis=(2, 3)).min(axis=0)  # a channel that varies in both images
    channel = int(spread.argmax())
    weight = np.zeros((3, features.shape[1]))
    weight[0, channel], weight[1, channel] = 1.0, -1.0
    weight[2] = np.random.default_rng(0).normal(size=features.shape[1])
    model.net.classifier.weight.data = torch.tensor(weight, dtype=torch.float32)

    expected = np.zeros((2, 3, *features.shape[2:]))
    for b in range(2):
        for k in range(3):
            raw = sum(weight[k, c] * features[b, c] for c in range(features.shape[1]))
            expected[b, k] = (raw - raw.min()) / (raw.max() - raw.min())
    maps = class_activation_maps(model.net, images, size=features.shape[2:]).numpy()
    assert maps.shape == expected.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(maps, expected, atol=1e-4)
    np.testing.assert_allclose(maps[:, 1], 1 - maps[:, 0], atol=1e-4)  # negated: reversed
    # At the input's size: the same maps, bilinearly upsampled before the scaling.
    upsampled = class_activation_maps(model.net, images)
    assert upsampled.shape == (2, 3, 128, 128)
    top = upsampled.flatten(-2).argmax(-1)
    for b in range(2):
        for k in range(3):
            row, col = np.unravel_index(expected[b, k].argmax(), expected.shape[2:])
            assert (int(top[b, k]) // 128 // 32, int(top[b, k]) % 128 // 32) == (row, col)


@pytest.mark.parametrize(
    "method", ["gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam"]
)
def test_grad_cam_methods_give_maps_of_the_input_size(method):
    model = make_model().eval()
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    maps = grad_cam(model.net, images, class_index=3, method=method)
    assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all() and maps.max() <= 1
    assert set(GRAD_METHODS) >= {"gradcam", "gradcam++", "scorecam"}
    with pytest.raises(ValueError, match="'magic' is not a heat-map method"):
        grad_cam(model.net, images, 0, "magic")


def test_overlay_is_at_the_xray_resolution():
    gray = np.full((300, 200), 100, np.uint8)
    heat = np.zeros((3, 2), np.float32)
    heat[0, 0] = 1
    blended = overlay(gray, heat)
    assert blended.shape == (300, 200, 3) and blended.dtype == np.uint8
    assert (
        blended[0, 0, 0] < blended[0, 0, 2] or blended[0, 0, 0] != blended[-1, -1, 0]
    )  # hot corner differs


def test_prediction_table_sorted_with_disagreements():
    probs = np.linspace(0.05, 0.95, 15)
    truth = np.zeros(15)
    truth[0] = 1  # lowest probability but true: a miss
    table = prediction_table(probs, class_names(), truth, 0.5)
    assert table["probability"].is_monotonic_decreasing
    assert table.loc[table["finding"] == class_names()[0], "disagree"].item() == "✗"
    predicted_positive_false = table[(table["probability"] >= 0.5) & ~table["truth"]]
    assert (predicted_positive_false["disagree"] == "✗").all()
    assert list(prediction_table(probs, class_names()).columns) == [
        "finding",
        "probability",
        "threshold",
        "above_threshold",
        "threshold_note",
    ]


def test_box_geometry():
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iobb((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(0.5)
    heat = np.zeros((20, 20))
    heat[2:5, 3:9] = 1
    heat[10:12, 10:12] = 0.8
    assert heatmap_boxes(heat, 0.5) == [(3.0, 2.0, 6.0, 3.0), (10.0, 10.0, 2.0, 2.0)]
    scored = score_box(heat, (3, 2, 6, 3), 0.5)
    assert scored["iou"] == 1.0 and scored["pointing_hit"] == 1.0


def test_real_box_list_reads_with_nih_spelling(nih_meta):
    boxes = read_bbox_list(nih_meta / "BBox_List_2017.csv.gz", class_names())
    assert len(boxes) == 984 and boxes["Image Index"].nunique() == 880
    assert "Infiltration" in set(boxes["Finding Label"]) and "Infiltrate" not in set(
        boxes["Finding Label"]
    )
    assert boxes["Finding Label"].nunique() == 8


@pytest.fixture
def learnt(learnt_run):
    return learnt_run


def test_callback_writes_overlays_and_tables_every_epoch(learnt):
    _, run = learnt
    for epoch in (0, 1):
        folder = run / "visualizations" / f"epoch_{epoch:03d}"
        assert len(list(folder.glob("*.png"))) == 3 and len(list(folder.glob("*.csv"))) == 3
    first = sorted(p.name for p in (run / "visualizations" / "epoch_000").glob("*.csv"))
    assert first == sorted(
        p.name for p in (run / "visualizations" / "epoch_001").glob("*.csv")
    )  # a fixed set
    table = pd.read_csv(next((run / "visualizations" / "epoch_001").glob("*.csv")))
    assert {"finding", "probability", "truth", "disagree"} <= set(table.columns) and table[
        "truth"
    ].any()


def test_callback_with_a_gradient_method(make_cfg):
    """Lightning calls the hook under inference mode; Grad-CAM still gets its gradients."""
    cfg = make_cfg(
        "callbacks.visualization.method=gradcam", "callbacks.visualization.n_images=1", "test=false"
    )
    train(cfg)
    assert (
        len(list((Path(cfg.paths.output_dir) / "visualizations" / "epoch_000").glob("*.png"))) == 1
    )


def test_localisation_far_above_chance(learnt, tmp_path):
    root, run = learnt
    table = localize(
        compose_task(
            "localize",
            tmp_path / "trained",
            f"ckpt={run}/checkpoints/best.ckpt",
            f"data.root={root}",
        )
    )
    overall = table.loc["All"]
    assert overall["boxes"] > 500
    assert overall["pointing"] > 3 * overall["pointing_chance"], overall
    assert overall["acc_iou@0.1"] > 0.25
    # The same heat maps from an untrained network point nowhere in particular.
    untrained = tmp_path / "untrained.ckpt"
    model = make_model()
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": {"image_size": 96}, "pytorch-lightning_version": "2"}, untrained)  # fmt: skip
    control = localize(
        compose_task("localize", tmp_path / "untrained", f"ckpt={untrained}", f"data.root={root}")
    ).loc["All"]
    assert overall["pointing"] > 2 * control["pointing"]
    assert (tmp_path / "trained" / "localization.csv").is_file()


def test_heatmap_of_a_lesion_peaks_on_it(learnt):
    """One image, one lesion: the CAM of that finding peaks inside the lesion's box half the time or more."""
    root, run = learnt
    model = CheXNetModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt").eval()
    boxes = read_bbox_list(root / "BBox_List_2017.csv", class_names())
    single = boxes.groupby("Image Index").filter(lambda g: len(g) == 1).head(40)
    hits = 0
    for _, box in single.iterrows():
        gray = np.array(Image.open(root / "images" / box["Image Index"]))
        image = torch.from_numpy(gray)[None, None]
        heat = heatmaps(model.net, image, [class_names().index(box["Finding Label"])], "cam")[
            0, 0
        ].numpy()
        hits += score_box(heat, (box["x"], box["y"], box["w"], box["h"]), 0.5)["pointing_hit"]
    assert hits / len(single) > 0.2


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_predict_one_image_and_a_folder_png_and_jpeg(learnt, tmp_path):
    root, run = learnt
    ckpt = f"ckpt={run}/checkpoints/best.ckpt"
    one = sorted((root / "images").iterdir())[0]
    result = run_cli(
        "chexnet_pl.predict", ckpt, f"image={one}", "method=gradcam", f"out={tmp_path / 'one'}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "one" / f"{one.stem}.csv").is_file() and len(
        list((tmp_path / "one").glob(f"{one.stem}_*.png"))
    ) == 1
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in sorted((root / "images").iterdir())[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    Image.open(one).save(folder / "scan.jpg", quality=95)
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    result = run_cli(
        "chexnet_pl.predict", ckpt, f"images={folder}", f"out={tmp_path / 'many'}", "top_k=2"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = pd.read_csv(tmp_path / "many" / "predictions.csv")
    assert len(predictions) == 4 and "scan.jpg" in set(predictions["Image Index"])
    assert list(predictions.columns[1:]) == [
        *(f"prob_{c}" for c in class_names()),
        "ood_score",
        "in_distribution",
        *(f"decision_{c}" for c in class_names()),
    ]  # the run fitted its out-of-distribution flag (chexnet_pl.ood) and its conformal rule
    assert len(list((tmp_path / "many").glob("*.png"))) == 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nope.png", "nope.png is not a file (no such file)"),
        (
            lambda d: (d / "text.png").write_text("not an image") and d / "text.png",
            "text.png: not a PNG, JPEG or DICOM image",  # the service's words, before torch
        ),
        (lambda d: d, "is a folder; use images="),
    ],
)
def test_predict_bad_inputs_are_named(learnt, tmp_path, make, message):
    _, run = learnt
    target = make(tmp_path)
    result = run_cli(
        "chexnet_pl.predict",
        f"ckpt={run}/checkpoints/best.ckpt",
        f"image={target}",
        f"out={tmp_path / 'out'}",
    )
    assert result.returncode == 2
    assert message in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_visualize_a_finding(learnt, tmp_path):
    root, run = learnt
    result = run_cli("chexnet_pl.visualize", f"ckpt={run}/checkpoints/best.ckpt", "label=Mass", "n=3",
                     f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    overlays = sorted(tmp_path.glob("*_Mass.png"))
    assert len(overlays) == 3
    for path in tmp_path.glob("*.csv"):
        table = pd.read_csv(path)
        assert table.loc[table["finding"] == "Mass", "truth"].item()  # every image chosen has Mass
    bad = run_cli(
        "chexnet_pl.visualize",
        f"ckpt={run}/checkpoints/best.ckpt",
        "label=Flu",
        f"hydra.run.dir={tmp_path / 'bad'}",
    )
    assert (
        bad.returncode == 2
        and "label='Flu' is not an output of this model" in bad.stderr + bad.stdout
    )


def test_cam_equals_grad_cam_for_a_pooled_linear_head():
    """With global average pooling + linear, Grad-CAM's channel weights are the classifier's
    weights divided by the map size, so Grad-CAM is CAM with negatives clipped (before scaling)."""
    torch.manual_seed(0)
    model = make_model().eval()
    images = torch.randint(0, 256, (1, 1, 128, 128), dtype=torch.uint8)
    with torch.inference_mode():
        features = model.net.forward_features(model.net.prepare_input(images))
        raw = torch.einsum("kc,bchw->bkhw", model.net.classifier.weight, features)[:, 4:5]
        clipped = torch.nn.functional.interpolate(
            raw.clamp_min(0), size=(128, 128), mode="bilinear"
        )[0, 0]
    expected = (clipped - clipped.min()) / (clipped.max() - clipped.min())
    from_grad_cam = grad_cam(model.net, images, class_index=4, method="gradcam")[0]
    assert torch.corrcoef(torch.stack([expected.flatten(), from_grad_cam.flatten()]))[0, 1] > 0.99
