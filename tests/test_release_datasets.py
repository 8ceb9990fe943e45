"""``chexnet_pl.datasets.PadChest``, ``VinDrCXR``, ``RSNAPneumonia`` and ``SIIMPneumothorax``: each
split gives the rows, labels (NaN: unknown) and image tensors training reads from ``data=<name>``
(Hydra's composition of the shipped config), on miniatures built from the real tables' rows with
generated 16-bit PNGs and DICOMs; and ``import chexnet_pl`` still imports no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import compose_train_config, tiny_dataset_overrides
from dicom_datasets import make_rsna_root, make_siim_root
from hydra.utils import instantiate
from test_padchest import PADCHEST_CSV, make_padchest_root
from test_rsna_pneumonia import LABELS_ZIP
from test_siim_pneumothorax import RLE_CSV
from test_vindr_cxr import VINDR_CSV, make_vindr_root


def _real(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(
            f"the real table {path} is not here (../shared/data is only beside CI checkouts)"
        )
    return path


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """data= option → a miniature download of it (real rows, generated images)."""
    made = tmp_path_factory.mktemp("releases")
    padchest = pd.read_csv(_real(PADCHEST_CSV), dtype=str, nrows=200)
    vindr = pd.read_csv(_real(VINDR_CSV))
    return {
        "padchest": make_padchest_root(made / "padchest", padchest, rows=200),
        "vindr_cxr": make_vindr_root(made / "vindr", vindr, images=80),
        "rsna_pneumonia": make_rsna_root(made / "rsna", _real(LABELS_ZIP), images=80),
        "siim_pneumothorax": make_siim_root(made / "siim", _real(RLE_CSV), images=80, patients=40),
    }


def training_split(data: str, root: Path, tmp_path: Path, split: str):
    """The split ``chexnet-train data=<data> data.root=<root>`` trains or evaluates on."""
    cfg = compose_train_config(
        tmp_path / "composed", tiny_dataset_overrides(data, f"data.root={root}")
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return datamodule, datamodule.datasets[split]


CLASSES = {"padchest": "PadChest", "vindr_cxr": "VinDrCXR", "rsna_pneumonia": "RSNAPneumonia",
           "siim_pneumothorax": "SIIMPneumothorax"}  # fmt: skip


@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("data", list(CLASSES))
def test_each_release_reads_the_rows_and_pixels_training_reads(roots, tmp_path, data, split):
    import chexnet_pl

    cls = getattr(chexnet_pl.datasets, CLASSES[data])
    dataset = cls(roots[data], split=split, image_size=32)
    datamodule, trained = training_split(data, roots[data], tmp_path, split)
    assert len(dataset) == len(trained) > 0
    assert dataset.class_names == list(datamodule.pathologies)
    pd.testing.assert_frame_equal(dataset.table, trained.table)
    np.testing.assert_array_equal(dataset.labels, trained.labels)  # NaN where not labelled
    for index in (0, len(dataset) - 1):
        image, label = dataset[index]
        sample = trained[index]
        assert str(image.dtype) == "torch.uint8" and tuple(image.shape) == (1, 32, 32)
        np.testing.assert_array_equal(image.numpy(), sample["img"].numpy())  # not augmented
        np.testing.assert_array_equal(label.numpy(), sample["lab"].numpy())
    assert repr(dataset).startswith(f"{CLASSES[data]}({split}: {len(dataset)} images")


def test_a_release_datasets_settings_are_its_configs(roots):
    """Keyword settings are the config's ``data.*``: VinDr's lenient vote marks at least as many
    positives as the majority; an unknown setting is named."""
    from chexnet_pl.datasets import VinDrCXR
    from chexnet_pl.errors import DataError

    majority = VinDrCXR(roots["vindr_cxr"], split="train", image_size=32)
    lenient = VinDrCXR(roots["vindr_cxr"], split="train", image_size=32, reader_vote="any")
    findings = slice(0, -1)  # No finding is the complement
    assert np.nansum(lenient.labels[:, findings]) > np.nansum(majority.labels[:, findings])
    with pytest.raises(DataError, match="reader_votes"):
        VinDrCXR(roots["vindr_cxr"], reader_votes="any")


@pytest.mark.slow
def test_import_chexnet_pl_still_loads_no_torch():
    code = ("import chexnet_pl, sys; assert 'torch' not in sys.modules; "
            "names = ['PadChest', 'VinDrCXR', 'RSNAPneumonia', 'SIIMPneumothorax']; "
            "import chexnet_pl.datasets as d; assert all(hasattr(d, n) for n in names); "
            "print('torch' in sys.modules)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"  # torch comes with the datasets, not before
