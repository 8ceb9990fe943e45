"""Shared fixtures: the real NIH data in ../shared/data (skipped when absent), generated data,
and the project's real Hydra configs composed for tiny runs."""

from __future__ import annotations

import os
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from chexnet_pl.command_runner import CONFIG_MODULE
from chexnet_pl.config_defaults import shipped
from chexnet_pl.data.nih import NIHDataModule
from chexnet_pl.data.nih_table import class_names as nih_class_names
from chexnet_pl.data.prepare import build_cache
from chexnet_pl.data.synthetic import generate_synthetic_nih
from chexnet_pl.models.module import CheXNetModule, shipped_model

os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHEXNET_SHARED_DATA", REPO.parent / "shared" / "data"))
NIH_META = SHARED_DATA / "nih-meta"
NIH_SAMPLE = SHARED_DATA / "nih-sample"
CHEXPERT_TRAIN_CSV = SHARED_DATA / "chexpert-meta" / "train.csv.gz"


@pytest.fixture(scope="session")
def nih_meta() -> Path:
    if not (NIH_META / "Data_Entry_2017_v2020.csv.gz").is_file():
        pytest.skip(
            f"real NIH metadata not found at {NIH_META} (../shared/data is only beside CI checkouts)"
        )
    return NIH_META


@pytest.fixture(scope="session")
def nih_sample() -> Path:
    if not (NIH_SAMPLE / "images").is_dir():
        pytest.skip(
            f"real NIH sample images not found at {NIH_SAMPLE} (../shared/data is only beside CI checkouts)"
        )
    return NIH_SAMPLE


@pytest.fixture(scope="session")
def chexpert_train_csv() -> Path:
    if not CHEXPERT_TRAIN_CSV.is_file():
        pytest.skip(
            f"CheXpert's real train.csv not found at {CHEXPERT_TRAIN_CSV} (../shared/data is only "
            "beside CI checkouts)"
        )
    return CHEXPERT_TRAIN_CSV


@pytest.fixture(scope="session")
def chexpert_root(tmp_path_factory, chexpert_train_csv) -> Path:
    """A CheXpert-v1.0-small download built from the real train.csv (301 rows of 80 patients, a
    24-image valid.csv) with generated 64 px JPEGs at the tables' paths; shared: read-only."""
    from xray_datasets import make_chexpert_root

    return make_chexpert_root(tmp_path_factory.mktemp("chexpert"), chexpert_train_csv)


@pytest.fixture(scope="session")
def mimic_root(tmp_path_factory) -> Path:
    """A miniature MIMIC-CXR-JPG v2 (40 subjects) in PhysioNet's layout; shared: read-only."""
    from xray_datasets import make_mimic_root

    return make_mimic_root(tmp_path_factory.mktemp("mimic"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic download (64 px PNGs) in NIH's format; shared, so treat it as read-only."""
    return generate_synthetic_nih(
        tmp_path_factory.mktemp("synthetic_nih"),
        num_patients=40,
        images_per_patient=3,
        image_size=64,
        prevalence=0.25,
        seed=1,
    )


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory, synthetic_root) -> Path:
    """``synthetic_root`` copied, with a prepared 32 px cache (the tests' image size), so
    ``data.loader=auto`` takes the device path; shared, so treat it as read-only."""
    root = tmp_path_factory.mktemp("synthetic_cached") / "nih"
    shutil.copytree(synthetic_root, root)
    build_cache(root, size=32, workers=1, progress=False)
    return root


def small_datamodule(root: Path, **overrides) -> NIHDataModule:
    """The shipped data module (conf/data/nih.yaml) shrunk for tests: 32 px, batch 4, no
    workers, the official split with seed 0; ``overrides`` merge in as on the command line."""
    settings = {"image_size": 32, "batch_size": 4, "num_workers": 0, "require_test": False,
                "split": {"seed": 0}, "seed": 0}  # fmt: skip
    return NIHDataModule(**shipped("data", root=str(root), **{**settings, **overrides}))


def make_model(**overrides) -> CheXNetModule:
    """The shipped model (conf/model/chexnet.yaml), randomly initialised (tests never download),
    with NIH's outputs unless ``class_names`` says otherwise (``include_no_finding=False``: 14)."""
    include = overrides.pop("include_no_finding", True)
    overrides.setdefault("class_names", nih_class_names(include))
    return shipped_model(**{"pretrained": False, **overrides})


def compose_config(
    name: str, output_dir: Path | None = None, *overrides: str, hydra_config: bool = False
) -> DictConfig:
    """A shipped config (``train``, ``evaluate``, ``predict``...) composed by Hydra from the
    installed package, as its command would; ``output_dir`` sets ``paths.output_dir``."""
    GlobalHydra.instance().clear()
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return compose(name, overrides=[*extra, *overrides], return_hydra_config=hydra_config)
    finally:
        GlobalHydra.instance().clear()


def compose_train_config(output_dir: Path, overrides: list[str] | None = None) -> DictConfig:
    """The shipped ``train.yaml`` composed by Hydra, as ``chexnet-train`` would."""
    return compose_config("train", output_dir, *(overrides or []))


def tiny_dataset_overrides(data: str, *roots: str) -> list[str]:
    """``tiny_overrides`` for ``data=<dataset>`` (``roots``: its ``data.*root=`` settings)."""
    shared = [o for o in tiny_overrides(Path(".")) if o.startswith(("model.", "trainer.", "+trainer.",
              "evaluation.", "callbacks."))]  # fmt: skip
    return [f"data={data}", *roots, "data.image_size=32", "data.batch_size=8",
            "data.eval_batch_size=16", "data.num_workers=0", *shared]  # fmt: skip


def tiny_overrides(root: Path, experiment: str = "demo") -> list[str]:
    """Shrink an experiment to seconds on a CPU: generated 64 px data, no workers, no downloads."""
    return [
        f"experiment={experiment}",
        f"data.root={root}",
        "data.synthetic=null",
        "data.image_size=32",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.num_workers=0",
        "model.pretrained=false",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "evaluation.bootstrap_samples=100",
        "callbacks.visualization.n_images=2",
    ]


@pytest.fixture
def make_cfg(tmp_path, synthetic_root):
    def _make(*extra: str, experiment: str = "demo") -> DictConfig:
        return compose_train_config(
            tmp_path / "run", tiny_overrides(synthetic_root, experiment) + list(extra)
        )

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture
def compose_cfg():
    """``compose_cfg(output_dir, overrides)``: the shipped config, composed as the CLI would."""
    yield compose_train_config
    GlobalHydra.instance().clear()


def arnoweng_checkpoint(path: Path) -> tuple[dict, torch.nn.Module]:
    """A checkpoint in arnoweng/CheXNet's format: DataParallel prefix, old DenseNet keys, 14 sigmoid outputs."""

    torch.manual_seed(3)
    reference = torchvision.models.densenet121()
    reference.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    import re

    state = OrderedDict(
        (
            "module.densenet121."
            + re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k),
            v,
        )
        for k, v in reference.state_dict().items()
    )
    assert "module.densenet121.features.denseblock1.denselayer1.norm.1.weight" in state
    torch.save({"epoch": 9, "arch": "DenseNet121", "state_dict": state, "best_loss": 0.15}, path)
    return state, reference.eval()


def random_checkpoint(
    path: Path, backbone: str = "densenet121", image_size: int = 64, seed: int = 0, **data
) -> Path:
    """A randomly initialised model (no download) saved as a loadable checkpoint: weights,
    hyperparameters, and the data settings ``data`` (e.g. root=) that the commands read from it."""
    import torch

    torch.manual_seed(seed)
    model = make_model(backbone=backbone)
    settings = {"image_size": image_size, "num_workers": 0, "eval_batch_size": 16, **data}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "datamodule_hyper_parameters": settings,
            "pytorch-lightning_version": "2",
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def learnt_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, run folder) of DenseNet-121 trained once per test session for two epochs on
    synthetic lesions (96 px, so CAMs are 3×3), with the final test evaluation: the checkpoint
    that evaluation, visualisation and export tests share."""
    from chexnet_pl.train import train

    base = tmp_path_factory.mktemp("learnt")
    root = generate_synthetic_nih(base / "data", num_patients=120, images_per_patient=3, image_size=96,
                                  prevalence=0.2, seed=5, lesion_scale=2.0)  # fmt: skip
    cfg = compose_train_config(base / "run", [
        "experiment=demo", f"data.root={root}", "data.synthetic=null", "data.num_workers=0",
        "data.image_size=96", "data.batch_size=16", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=100",
        "callbacks.visualization.n_images=3",
        # The same network on every machine: precision=auto is bf16 on CPUs with AVX512-BF16 and
        # fp32 elsewhere, and the heat-map tests judge what this network learnt.
        "trainer.precision=32-true",
    ])  # fmt: skip
    metrics, _ = train(cfg)
    assert metrics["val/auroc"] > 0.75, metrics
    return root, base / "run"


# The tiers: ``slow`` marks the tests that train or launch a process, and the few in-process ones
# over ~3 s (whole evaluations, exports, real tables; each says so) — the full suite, `make test`;
# the rest is the fast tier (`make test-fast`, ``-m "not slow"``, under 3 min on 2 cores). A test
# using a fixture that trains is slow by that (below); others carry ``@pytest.mark.slow`` themselves.
# A fast test that trains or launches a process, itself or through a fixture, fails, saying so.
TRAINING_FIXTURES = {"make_cfg", "compose_cfg", "learnt_run", "learnt", "trained_run", "trained"}
_running: list[pytest.Item] = []  # the test being set up, run or torn down


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def console_script(name: str) -> list[str]:
    """How a user runs ``chexnet-<name>``: the console script installed beside this Python
    (``.venv/bin/chexnet-predict``), or ``python -m chexnet_pl.<module>`` where there is none."""
    script = Path(sys.executable).parent / f"chexnet-{name}"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", f"chexnet_pl.{name.replace('-', '_')}"]


def pytest_runtest_setup(item):
    _running[:] = [item]


def _tier_guard(what: str, original):
    def guarded(*args, **kwargs):
        if _running and _running[0].get_closest_marker("slow") is None:
            raise AssertionError(f"{_running[0].nodeid} {what}: mark it @pytest.mark.slow")
        return original(*args, **kwargs)

    return guarded


def pytest_configure(config):
    import subprocess

    import pytorch_lightning as pl

    pl.Trainer.fit = _tier_guard("trains", pl.Trainer.fit)
    subprocess.Popen.__init__ = _tier_guard("launches a process", subprocess.Popen.__init__)
