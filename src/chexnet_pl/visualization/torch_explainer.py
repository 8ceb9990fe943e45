"""``explain``'s model when it is the PyTorch network: CAM (probabilities and every class's map
in one forward pass) or a Grad-CAM method of the ``grad-cam`` package."""

from __future__ import annotations

import numpy as np
import torch

from chexnet_pl.visualization.heatmaps import heatmaps, probabilities_and_cams, resolve_method


class TorchExplainer:
    """A PyTorch network (``models.network.ChestXrayNet``) explained by ``method``
    (``auto``: CAM where its head allows it, else Grad-CAM)."""

    def __init__(self, model, method: str = "auto") -> None:
        self.model = model
        self.method = resolve_method(model, method)
        self.class_names = list(model.class_names)
        self._cams: torch.Tensor | None = None  # every class's CAM of the last batch

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images))
        if self.method == "cam":
            probabilities, self._cams = probabilities_and_cams(self.model, batch)
            return probabilities.numpy()
        self._cams = None
        return self.model.predict_proba(batch).cpu().numpy()

    def maps(self, images: np.ndarray, classes: list[int]) -> np.ndarray:
        if self._cams is not None and len(self._cams) == len(images):
            return self._cams[:, classes].numpy()
        batch = torch.from_numpy(np.ascontiguousarray(images))
        return heatmaps(self.model, batch, classes, self.method).numpy()
