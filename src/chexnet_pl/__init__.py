"""CheXNet with PyTorch Lightning and Hydra: NIH ChestX-ray14, CheXpert and MIMIC-CXR-JPG."""

from chexnet_pl.labels import NO_FINDING, finding_names

__all__ = ["NO_FINDING", "finding_names"]
__version__ = "0.1.0"
