"""Lightning callbacks of the project."""

from chexnet_pl.callbacks.best_checkpoint import BestCheckpoint
from chexnet_pl.callbacks.freeze_backbone import FreezeBackbone
from chexnet_pl.callbacks.interrupt import InterruptCheckpoint
from chexnet_pl.callbacks.progress import SyncFreeProgressBar
from chexnet_pl.callbacks.rng_state import RNGStateCheckpoint
from chexnet_pl.callbacks.throughput import Throughput
from chexnet_pl.callbacks.visualization import VisualizationCallback

__all__ = [
    "BestCheckpoint",
    "FreezeBackbone",
    "InterruptCheckpoint",
    "RNGStateCheckpoint",
    "SyncFreeProgressBar",
    "Throughput",
    "VisualizationCallback",
]
