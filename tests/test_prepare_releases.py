"""``chexnet-prepare`` on DICOM roots (VinDr's ``.dicom``, RSNA's and SIIM's nested ``.dcm``) and
PadChest's 16-bit PNGs, as on NIH's PNGs: the cache holds exactly the pixels training computes from
the files (rescale, window, MONOCHROME1 inverted, 12/16-bit scaled, area-resized), the data
modules read it, and the decoder's size limit refuses a file before decoding it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dicom_datasets import make_rsna_root, make_siim_root
from test_dicom import write_dicom
from test_padchest import PADCHEST_CSV, make_padchest_root
from test_rsna_pneumonia import LABELS_ZIP
from test_siim_pneumothorax import RLE_CSV
from test_vindr_cxr import VINDR_CSV, make_vindr_root

from chexnet_pl.config_defaults import shipped_data
from chexnet_pl.data.cache import INDEX, cache_folder, open_cache
from chexnet_pl.data.images import list_images, read_gray
from chexnet_pl.data.prepare import build_cache
from chexnet_pl.data.synthetic import _render
from chexnet_pl.data.transforms import area_resize

SIZE = 32
TARGETS = {
    "padchest": "chexnet_pl.data.padchest.PadChestDataModule",
    "vindr_cxr": "chexnet_pl.data.vindr_cxr.VinDrCXRDataModule",
    "rsna_pneumonia": "chexnet_pl.data.rsna_pneumonia.RSNAPneumoniaDataModule",
    "siim_pneumothorax": "chexnet_pl.data.siim_pneumothorax.SIIMPneumothoraxDataModule",
}


def _real(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(
            f"the real table {path} is not here (../shared/data is only beside CI checkouts)"
        )
    return path


def windowed_dicoms(root: Path, count: int, rng: np.random.Generator) -> list[Path]:
    """Rewrite ``count`` of RSNA's DICOMs as radiographs stored the other ways a release does:
    16-bit MONOCHROME1 with a rescale and a window, and 12-bit MONOCHROME2 with a window."""
    paths = sorted((root / "stage_2_train_images").glob("*.dcm"))[:count]
    for i, path in enumerate(paths):
        gray, _ = _render(64, ["Pneumonia"], rng)
        stored = gray.astype(np.uint16) * 16  # 12-bit values
        if i % 2 == 0:  # white = low values, modality = 2 * stored - 1024, window on it
            write_dicom(path, (4095 - stored).astype(np.uint16), photometric="MONOCHROME1",
                        bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024,
                        WindowCenter=3000, WindowWidth=5000, PatientID=path.stem,
                        PatientSex="F", PatientAge="050Y", ViewPosition="PA")  # fmt: skip
        else:
            write_dicom(path, stored, bits_stored=12, WindowCenter=1500, WindowWidth=2500,
                        PatientID=path.stem, PatientSex="M", PatientAge="061Y",
                        ViewPosition="AP")  # fmt: skip
    return paths


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    made = tmp_path_factory.mktemp("prepare_releases")
    rsna = make_rsna_root(made / "rsna", _real(LABELS_ZIP), images=60)
    windowed_dicoms(rsna, 10, np.random.default_rng(7))
    return {
        "padchest": make_padchest_root(
            made / "padchest", pd.read_csv(_real(PADCHEST_CSV), dtype=str, nrows=120), rows=120
        ),
        "vindr_cxr": make_vindr_root(made / "vindr", pd.read_csv(_real(VINDR_CSV)), images=60),
        "rsna_pneumonia": rsna,
        "siim_pneumothorax": make_siim_root(made / "siim", _real(RLE_CSV), images=60, patients=30),
    }


def datamodule(data: str, root: Path, **settings):
    from chexnet_pl.data.build import build_datamodule

    dm = build_datamodule({"_target_": TARGETS[data], **shipped_data(
        TARGETS[data], root=str(root), image_size=SIZE, num_workers=0, **settings)})  # fmt: skip
    dm.setup()
    return dm


@pytest.mark.parametrize("data", list(TARGETS))
def test_the_cache_holds_the_pixels_training_computes(roots, tmp_path, data):
    root = Path(shutil.copytree(roots[data], tmp_path / data))
    folder = build_cache(root, size=SIZE, workers=1, progress=False)
    cache = open_cache(folder, SIZE)
    on_disk = list_images(root)
    assert cache.count == len(on_disk) > 0
    # every cached image is the file decoded as training decodes it, area-resized
    names = list(on_disk)
    for name, row in zip(names, cache.rows_of(names), strict=True):
        expected = area_resize(read_gray(on_disk[name]), SIZE)
        np.testing.assert_array_equal(cache.read(int(row)), expected, err_msg=name)
    cached = datamodule(data, root, cache="required")
    files = datamodule(data, root, cache="off")
    assert cached.image_cache is not None and files.image_cache is None
    for split in ("val", "test"):
        a, b = cached.datasets[split], files.datasets[split]
        pd.testing.assert_frame_equal(a.table, b.table)
        for i in range(len(a)):
            assert torch.equal(a[i]["img"], b[i]["img"]), (data, split, i)


def test_monochrome1_and_windows_are_read_as_training_reads_them(roots):
    """A MONOCHROME1 file is inverted (bone bright), the rescale and window applied: the same
    stored image as MONOCHROME1 and as MONOCHROME2 are each other's negative."""
    rng = np.random.default_rng(3)
    paths = sorted((roots["rsna_pneumonia"] / "stage_2_train_images").glob("*.dcm"))[:2]
    inverted = read_gray(paths[0])
    assert inverted.dtype == np.uint8 and inverted.shape == (64, 64)
    gray, _ = _render(64, [], rng)
    stored = gray.astype(np.uint16) * 16
    folder = paths[0].parent.parent / "pair"
    folder.mkdir(exist_ok=True)
    one = read_gray(write_dicom(folder / "m1.dcm", stored, photometric="MONOCHROME1",
                                bits_stored=12))  # fmt: skip
    two = read_gray(write_dicom(folder / "m2.dcm", stored, bits_stored=12))
    shutil.rmtree(folder)
    assert np.array_equal(one.astype(int), 255 - two.astype(int))
    # 12-bit → 8-bit: 0-4095 → 0-255
    assert abs(int(two.astype(int).mean()) - int(gray.mean())) <= 1


def test_the_size_limit_refuses_before_decoding(roots, tmp_path):
    """``max_pixels``: a DICOM and a 16-bit PNG declaring more pixels are recorded as unreadable
    (listed in the cache's index with the reason), the others cached; training then follows data.on_bad_image."""
    from PIL import Image

    from chexnet_pl.errors import DataError

    vindr = Path(shutil.copytree(roots["vindr_cxr"], tmp_path / "vindr"))
    big_dicom = sorted((vindr / "train").glob("*.dicom"))[0]
    write_dicom(big_dicom, np.zeros((80, 80), np.uint16), bits_stored=12)
    padchest = Path(shutil.copytree(roots["padchest"], tmp_path / "padchest"))
    kept = datamodule("padchest", padchest, cache="off").table["path"]
    big_png = Path(kept.iloc[0])
    Image.fromarray(np.zeros((80, 80), np.uint16)).save(big_png)
    for root, big in ((vindr, big_dicom), (padchest, big_png)):
        folder = build_cache(root, size=SIZE, workers=1, progress=False, max_pixels=64 * 64)
        index = pd.read_csv(folder / INDEX, keep_default_na=False)
        bad = index[index["status"] == "bad"]
        assert len(bad) == 1 and Path(bad["source"].iloc[0]).name == big.name, bad
        assert "80×80 pixels" in bad["error"].iloc[0]
        assert "refused before decoding" in bad["error"].iloc[0]
        assert (index["status"] == "ok").sum() == len(index) - 1
        data = "vindr_cxr" if root == vindr else "padchest"
        with pytest.raises(DataError, match=r"declares 80×80 pixels .*refused before decoding"):
            datamodule(data, root, cache="required", report_dir=str(tmp_path / "report"))
        skipped = datamodule(data, root, cache="required", on_bad_image="skip",
                             report_dir=str(tmp_path / "report"))  # fmt: skip
        assert big.name not in set(skipped.table["path"].map(lambda p: Path(p).name))
    assert cache_folder(vindr / "prepared", SIZE).is_dir()
