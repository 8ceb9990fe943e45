"""The heat-map methods by name, without importing torch or the ``grad-cam`` package (a command
checks ``method=`` before it loads anything; ``heatmaps`` computes the maps)."""

from __future__ import annotations

from chexnet_pl.errors import ChexnetError, ConfigError

# name → class of the ``grad-cam`` package, imported when a map is asked of it: importing the
# package (it pulls in scikit-learn, SciPy and more) costs seconds at every command's start.
GRAD_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "gradcamelementwise": "GradCAMElementWise",
}
METHODS = ("auto", "cam", *GRAD_METHODS)


class CAMUnavailableError(ChexnetError, ValueError):
    """CAM was asked of a backbone whose head is not global average pooling + one linear layer."""


class UnknownMethodError(ConfigError):
    """A heat-map method name that is not one of ``METHODS``."""


def check_method(method: str, setting: str = "method") -> str:
    """``method`` when it names a heat-map method, else an error naming ``setting`` and the choices."""
    if method not in METHODS:
        raise UnknownMethodError(
            f"{setting}={method!r} is not a heat-map method; use one of {METHODS}"
        )
    return method
