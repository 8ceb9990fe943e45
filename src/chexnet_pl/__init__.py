"""CheXNet with PyTorch Lightning and Hydra: NIH ChestX-ray14, CheXpert and MIMIC-CXR-JPG.

The Python API (importing the package loads none of it, nor torch, until a name is used)::

    import chexnet_pl as cx

    model = cx.load("outputs/train/2026-12-01/09-30-00/checkpoints/best.ckpt")
    table = model.predict(["xray.png"])           # image, prob_<finding>, above_<finding>
    heat = model.explain("xray.png", "Effusion")  # H×W in [0, 1]
    cx.overlay("xray.png", heat).save("effusion.png")
    embedding = model.features(["xray.png"])      # N×D
    cx.model_card("outputs/train/2026-12-01/09-30-00")  # MODEL_CARD.md from the run's files
    result = cx.evaluate(table, "/data/nih")      # .aucs, .calibration, .subgroups, .write()
    test = cx.datasets.NIH("/data/nih", split="test", image_size=224)
    run_folder = cx.train(["experiment=densenet121", "data.root=/data/nih"])
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from chexnet_pl.label_sets import NO_FINDING, finding_names

__version__ = "0.1.0"

# Public name → (module, attribute; None: the module itself), imported on first use.
_LAZY = {
    "load": ("chexnet_pl.api.model", "load"),
    "Model": ("chexnet_pl.api.model", "Model"),
    "overlay": ("chexnet_pl.api.model", "overlay"),
    "model_card": ("chexnet_pl.serving.model_card", "model_card"),
    "evaluate": ("chexnet_pl.api.evaluation", "evaluate"),
    "Evaluation": ("chexnet_pl.api.evaluation", "Evaluation"),
    "train": ("chexnet_pl.api.training", "train"),
    "datasets": ("chexnet_pl.datasets", None),
}
# Command modules that share their name with an API function (``python -m chexnet_pl.train``):
# once imported they are the package's attribute of that name, so they are made callable as it.
_CALLABLE_COMMANDS = ("train", "evaluate")

__all__ = ["NO_FINDING", "finding_names", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'chexnet_pl' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attribute is None else getattr(value, attribute)
    if name not in _CALLABLE_COMMANDS:  # those stay lazy: the command module may take the name
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _CallableCommand(types.ModuleType):
    """A command module (``chexnet_pl.train``, ``chexnet_pl.evaluate``) that is also the API
    function of its name: ``chexnet_pl.evaluate(...)`` works whether or not the command module
    was imported (importing it makes it the package's attribute ``evaluate``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        module, attribute = _LAZY[self.__name__.rsplit(".", 1)[1]]
        return getattr(importlib.import_module(module), attribute)(*args, **kwargs)


class _Package(types.ModuleType):
    """This package's module: a command module set as its attribute (what ``import`` does)
    becomes a ``_CallableCommand``."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _CALLABLE_COMMANDS
            and type(value) is types.ModuleType
            and value.__name__ == f"{__name__}.{name}"
        ):
            value.__class__ = _CallableCommand
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
for _name in _CALLABLE_COMMANDS:  # imported before this line ran (not in practice; for reloads)
    _module = sys.modules.get(f"{__name__}.{_name}")
    if _module is not None and type(_module) is types.ModuleType:
        _module.__class__ = _CallableCommand
