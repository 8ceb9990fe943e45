"""Reading a trained run back from its checkpoint: the one place every command loads a model.

A chexnet_pl checkpoint holds the model's plain hyperparameters (backbone, classes, ...), its
weights, and the data module's settings (root, split, image size), so ``load_run`` rebuilds the
model and ``datamodule_for`` the same data and split without any config.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chexnet_pl.checkpoints.file_io import read_checkpoint
from chexnet_pl.config_defaults import shipped
from chexnet_pl.data.build import TARGET, build_datamodule
from chexnet_pl.device import detect_caps
from chexnet_pl.errors import DataError, WeightsError
from chexnet_pl.models.input_contract import input_size
from chexnet_pl.models.network import ChestXrayNet

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A trained model with what it was trained on."""

    path: Path
    model: Any  # models.network.ChestXrayNet, in eval mode
    data_settings: dict = field(default_factory=dict)
    ood: Any = None  # chexnet_pl.ood.OodState, or None: the checkpoint has no OOD flag fitted

    @property
    def image_size(self) -> int:
        """The size the model was trained at (``models.input_contract.input_size``)."""
        return input_size(self.model)


def load_run(checkpoint: str | Path, device: str | torch.device | None = None) -> Run:
    """The checkpoint's network (a ``ChestXrayNet``: eval mode, on ``device`` or the GPU when
    there is one) and data settings; ImageNet weights are never fetched, the checkpoint holds
    every weight. Lightning is not needed (nor imported) to read a run back. A safetensors
    export (``<name>.safetensors`` with its sidecar) is read without pickle instead
    (``serving.safetensors_export``)."""
    path = Path(checkpoint).expanduser()
    if path.suffix.lower() == ".safetensors":
        return load_safetensors_run(path, device)
    stored = read_checkpoint(path)
    hparams = stored.get("hyper_parameters")
    if not isinstance(stored.get("state_dict"), dict) or not isinstance(hparams, dict):
        raise WeightsError(
            f"{path} holds no model weights and settings; is it a chexnet_pl checkpoint "
            "(<run>/checkpoints/*.ckpt, or one written by chexnet-import-weights)?"
        )
    names = hparams.get("class_names")
    if not names:
        raise WeightsError(
            f"{path} does not name its outputs (no class_names in its settings); it predates "
            "label sets as data: retrain, or import it with chexnet-import-weights"
        )
    data_settings = dict(stored.get("datamodule_hyper_parameters") or {})
    # A checkpoint written before a setting existed gets the shipped value of that setting.
    settings = shipped("model", **{k: v for k, v in hparams.items() if k != "class_names"})
    settings["image_size"] = trained_image_size(hparams, data_settings)
    try:
        model = ChestXrayNet(settings, names)
        model.load_weights(stored["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise WeightsError(
            f"{path} does not fit the model its settings describe: {str(exc).splitlines()[0][:300]}"
        ) from exc
    model = model.to(device or detect_caps().device).eval()
    from chexnet_pl.models.ood import stored_state

    return Run(path, model, data_settings, stored_state(stored, path))


def trained_image_size(hparams: Mapping[str, Any], data_settings: Mapping[str, Any]) -> int:
    """The size a checkpoint's model was trained at: in its settings; for one written before the
    model carried it, its data's; for one imported from another project, the shipped size."""
    for source in (hparams, data_settings):
        if source.get("image_size") is not None:
            return int(source["image_size"])
    return int(shipped("data")["image_size"])


# With data=<dataset>, these load the images as the run did unless the command line says otherwise.
AS_THE_RUN_LOADED = ("image_size", "loader", "num_workers", "eval_batch_size", "missing_images")


def datamodule_for(run: Run, overrides: Mapping[str, Any], output_dir: str | Path):
    """The data module and split ``run`` was trained with; ``overrides`` (``data.*`` given on the
    command line, None = keep) take precedence. With ``data=<dataset>`` (``overrides`` has a
    ``_target_``), that dataset as configured instead — external validation — loading its images
    as the run did (size, loader, workers) where the config leaves a value unset (None)."""
    overrides = dict(overrides)
    if overrides.get(TARGET):
        if not overrides.get("root"):
            raise DataError(
                f"scoring on another dataset ({overrides[TARGET].rsplit('.', 1)[-1]}) needs its "
                "folder: give data.root=/path/to/it"
            )
        settings = {
            k: run.data_settings.get(k) if v is None and k in AS_THE_RUN_LOADED else v
            for k, v in overrides.items()
        }
        settings = {k: v for k, v in settings.items() if v is not None}  # unset: the default
        if overrides.get("image_size") is None:
            settings["image_size"] = input_size(run.model)
    else:
        settings = {**run.data_settings, TARGET: run.data_settings.get(TARGET)}
        if "include_no_finding" in settings:
            settings["include_no_finding"] = bool(run.model.hparams.include_no_finding)
        settings.update({k: v for k, v in overrides.items() if v is not None})
    settings |= {"report_dir": str(output_dir)}
    if "synthetic" in settings:
        settings["synthetic"] = None
    # a pool (data=pooled, data=nih+chexpert) has no root of its own: each member names its folder
    if "root" in settings and not settings.get("root") and not settings.get("datasets"):
        raise DataError(
            f"{run.path} does not name the data folder it was trained on; "
            "give data.root=/path/to/the/data"
        )
    return build_datamodule(settings)


def load_safetensors_run(path: str | Path, device: str | torch.device | None = None):
    """A ``checkpoints.Run`` of a safetensors export: its network rebuilt from the sidecar and
    its weights, with no pickle; no data settings (give ``data.root=`` where a command needs
    them)."""
    from chexnet_pl.device import detect_caps
    from chexnet_pl.serving.safetensors_export import network_from, read_export

    path = Path(path).expanduser()
    card, data = read_export(path)
    model = network_from(card.get("network"), data, path)
    ood = None
    if card.get("ood") is not None:  # the checkpoint's OOD flag, as its sidecar carries it
        from chexnet_pl.models.ood import OodState
        from chexnet_pl.serving.sidecar import sidecar_path

        ood = OodState.from_stored(card["ood"], sidecar_path(path))
    return Run(path, model.to(device or detect_caps().device).eval(), {}, ood)
