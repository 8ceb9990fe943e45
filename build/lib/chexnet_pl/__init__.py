"""CheXNet on NIH ChestX-ray14 with PyTorch Lightning and Hydra."""

from chexnet_pl.labels import FINDINGS, NO_FINDING, class_names

__all__ = ["FINDINGS", "NO_FINDING", "class_names"]
__version__ = "0.1.0"
