# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # chexnet_pl from Python
#
# Everything the commands do is a function call away. This tutorial runs on a small sample of
# NIH ChestX-ray14 (59 images with NIH's own metadata and split lists) and takes a few minutes
# on a laptop CPU: it loads the sample as a dataset, trains a tiny model, evaluates it, explains
# an image, and fits a linear probe on the model's image embeddings.
#
# Open it as a notebook with `jupytext --to notebook docs/tutorial.py`, or run it as a script:
# `python docs/tutorial.py`. `CHEXNET_TUTORIAL_DATA` points it at the data (NIH's folder
# layout: `Data_Entry_2017*.csv`, `train_val_list.txt`, `test_list.txt`, `images/`), and
# `CHEXNET_TUTORIAL_OUT` at the folder it writes into.

# %%
import logging
import os
from pathlib import Path

import numpy as np

import chexnet_pl as cx

logging.basicConfig(level=logging.WARNING)  # the library logs what it does at INFO
DATA = Path(os.environ.get("CHEXNET_TUTORIAL_DATA", "../shared/data/nih-sample")).resolve()
OUT = Path(os.environ.get("CHEXNET_TUTORIAL_OUT", "tutorial-outputs")).resolve()
IMAGE_SIZE = 64  # tiny, for speed; CheXNet trains at 224

# %% [markdown]
# ## The data, as training reads it
#
# `cx.datasets.NIH` is a torch `Dataset` of one split, read by the same code as training (the
# split lists, labels and image checks of `conf/data/nih.yaml`). Each item is a uint8 image
# tensor and a float label vector (NaN where a label is unknown); `.table` holds its rows.

# %%
test = cx.datasets.NIH(DATA, split="test", image_size=IMAGE_SIZE)
image, label = test[0]
print(test, "| image", tuple(image.shape), image.dtype, "| labels", tuple(label.shape))
print(test.table[["Image Index", "Patient ID", "Finding Labels"]].head())

# %% [markdown]
# ## Train a tiny model
#
# `cx.train` takes the settings `chexnet-train` takes, composed by Hydra from the shipped
# configs and checked the same way, and returns the run folder. Here: the `demo` recipe
# (DenseNet-121 without downloaded weights) for one epoch of a few batches.

# %%
run = cx.train(
    [
        "experiment=demo",
        f"data.root={DATA}",
        "data.synthetic=null",
        f"data.image_size={IMAGE_SIZE}",
        "data.batch_size=8",
        "data.num_workers=0",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "trainer.precision=32-true",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "evaluation.bootstrap_samples=50",
        "callbacks.visualization.n_images=1",
        f"hydra.run.dir={OUT / 'run'}",
    ]
)
print("run folder:", run, sorted(p.name for p in (run / "checkpoints").iterdir()))

# %% [markdown]
# ## Evaluate
#
# Training already scored the test split (`<run>/aucs.csv`). `cx.evaluate` is the engine of
# `chexnet-evaluate`: predictions (a table or a CSV) against the labels, with operating
# thresholds chosen on the validation predictions.

# %%
evaluation = cx.evaluate(
    run / "preds.csv", DATA, val_predictions=run / "preds_val.csv", bootstrap_samples=50
)
print(evaluation.aucs[["auroc", "positives", "negatives", "threshold"]].round(3))
evaluation.write(OUT / "evaluation")  # aucs.csv, calibration.csv, ROC/PR curves, ...

# %% [markdown]
# ## Predict and explain an image
#
# `cx.load` reads the checkpoint with its class names, input size and the operating thresholds
# of its run (`<run>/aucs.csv`). `predict` gives the probabilities `chexnet-predict` gives;
# `explain` a heat map at the image's resolution, drawn by `cx.overlay`.

# %%
model = cx.load(run / "checkpoints" / "best.ckpt")
xray = DATA / "images" / test.table["Image Index"].iloc[0]
table = model.predict([xray])
probabilities = table.filter(like="prob_").iloc[0].sort_values(ascending=False)
print(probabilities.head(3).round(3))
finding = probabilities.index[0].removeprefix("prob_")
heat = model.explain(xray, finding, method="cam")
print(f"{finding}: heat map {heat.shape}, values {heat.min():.2f}-{heat.max():.2f}")
cx.overlay(xray, heat).save(OUT / "overlay.png")

# %% [markdown]
# ## Embeddings and a linear probe
#
# `features` gives the pooled penultimate embedding of each image (what the classifier reads):
# here a logistic regression on the training images' embeddings predicts one finding on the
# test images.

# %%
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

train = cx.datasets.NIH(DATA, split="train", image_size=IMAGE_SIZE)
train_x = model.features(train.table["path"].tolist())
test_x = model.features(test.table["path"].tolist())
print("embeddings:", train_x.shape, test_x.shape)


def balance(labels: np.ndarray) -> np.ndarray:
    """Per finding, the smaller of its positive and negative counts (NaN: unknown)."""
    return np.minimum(np.nansum(labels, 0), np.nansum(1 - labels, 0))


# The finding with the most even labels among those both splits have positives and negatives of.
usable = (balance(train.labels) > 0) & (balance(test.labels) > 0)
j = int(np.argmax(np.where(usable, balance(train.labels), -1)))
probe = LogisticRegression(max_iter=1000).fit(train_x, train.labels[:, j])
auroc = roc_auc_score(test.labels[:, j], probe.predict_proba(test_x)[:, 1])
print(f"linear probe for {train.class_names[j]}: test AUROC {auroc:.3f} ({len(test)} images)")
