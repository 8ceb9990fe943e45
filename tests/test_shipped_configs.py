"""The shipped configurations are tests: every recipe, trainer, logger and sweep composed from
the shipped files with only ``data.root`` given (``--check`` does the same), and every other
command's config, pass the pre-flight check; each recipe trains (slow tier)."""

from __future__ import annotations

import copy
import importlib
import shutil
from pathlib import Path

import pytest
from conftest import REPO, random_checkpoint

from chexnet_pl.errors import ConfigError
from chexnet_pl.overrides import check_overrides, composed_jobs

CONF = REPO / "conf"
TRAIN = {"check": importlib.import_module("chexnet_pl.train").check_config, "doc": None}


def preflight(command: str, cfg) -> None:
    """The pre-flight check ``chexnet-<command>`` passes to ``run_command`` (its ``check_config``)."""
    importlib.import_module(f"chexnet_pl.{command}").check_config(cfg)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


EXPERIMENTS = options("experiment")
TRAINERS = options("trainer")
LOGGERS = options("logger")
SEARCHES = [None, *options("hparams_search")]


def test_the_matrix_is_what_ships():
    """The groups this file crosses are the shipped ones (a new file is crossed too)."""
    assert {"auto", "cpu", "gpu", "ddp"} <= set(TRAINERS) and len(EXPERIMENTS) >= 10
    assert {"csv", "tensorboard", "wandb"} <= set(LOGGERS) and len(SEARCHES) >= 3


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory) -> Path:
    """What ``experiment=retrain`` needs; the pre-flight check reads no weights."""
    path = tmp_path_factory.mktemp("start") / "best.ckpt"
    path.write_bytes(b"not read by the check")
    return path


def train_args(experiment: str, root: Path, start: Path) -> list[str]:
    """The command line of a user: a recipe and the data (and the run ``retrain`` starts from)."""
    args = [f"experiment={experiment}", f"data.root={root}"]
    return args + ([f"init_from={start}"] if experiment == "retrain" else [])


# What each crossed group's files may set: nothing else, or the matrix below would not be the
# compositions it stands for. Hydra's bookkeeping (the choices, the command line) differs anyway.
GROUP_KEYS = {
    "trainer": {"trainer"},
    "logger": {"logger"},
    "hparams_search": {"optimized_metric", "hydra.mode", "hydra.sweeper"},
}
BOOKKEEPING = {"hydra.runtime", "hydra.overrides", "hydra.job"}


def changed(a, b) -> set[str]:
    """The top-level keys (and Hydra's second-level ones) whose values differ between a and b."""
    from omegaconf import OmegaConf

    a, b = (OmegaConf.to_container(c, resolve=False) for c in (a, b))
    keys = {k for k in a.keys() | b.keys() if k != "hydra" and a.get(k) != b.get(k)}
    hydra_a, hydra_b = a.get("hydra", {}), b.get("hydra", {})
    keys |= {f"hydra.{k}" for k in hydra_a.keys() | hydra_b.keys()
             if hydra_a.get(k) != hydra_b.get(k)}  # fmt: skip
    return keys - BOOKKEEPING


def cross(cfg, logger, search) -> None:
    """Give ``cfg`` (a recipe with a trainer) the logger and the sweep of two other compositions
    of the recipe (OmegaConf copies what is assigned)."""
    from omegaconf import open_dict, read_write

    with read_write(cfg), open_dict(cfg), read_write(cfg.hydra):  # Hydra's section is read-only
        cfg.logger = logger.logger
        cfg.optimized_metric = search.optimized_metric
        cfg.hydra.mode = search.hydra.mode
        cfg.hydra.sweeper = search.hydra.sweeper


# The shipped default recipe is checked in the fast tier; the other recipes (about 9 s each, as
# each reads NIH's full table) with the slow tier.
@pytest.mark.parametrize(
    "experiment",
    [e if e == "densenet121" else pytest.param(e, marks=pytest.mark.slow) for e in EXPERIMENTS],
)
def test_every_shipped_training_config_passes_the_preflight_check(
    experiment, nih_sample, start_checkpoint
):
    """Each trainer × logger × sweep with this recipe, as ``chexnet-train ... --check`` runs it.

    Hydra composes the recipe with each trainer, each logger and each sweep (one group at a
    time); each group's files are shown to set only their own keys, so every trainer × logger ×
    sweep config is those compositions crossed — and one crossed config is shown equal to its
    full composition. All are then checked as the command checks them."""
    from hydra.core.hydra_config import HydraConfig

    args = train_args(experiment, nih_sample, start_checkpoint)
    assert check_overrides("train", args) == []
    options = {"trainer": TRAINERS, "logger": LOGGERS, "hparams_search": SEARCHES[1:]}
    lines = [args] + [[*args, f"{group}={option}"] for group, values in options.items()
                      for option in values]  # fmt: skip
    last = [*args, *(f"{group}={values[-1]}" for group, values in options.items())]
    composed = [cfg.copy() for cfg in composed_jobs("train", *lines, last)]
    base, full = composed[0], composed[-1]
    by_group, position = {}, 1
    for group, values in options.items():
        by_group[group] = dict(zip(values, composed[position : position + len(values)],
                                   strict=True))  # fmt: skip
        position += len(values)
        for option, cfg in by_group[group].items():
            assert changed(base, cfg) <= GROUP_KEYS[group], (group, option)
    by_group["hparams_search"][None] = base
    # the crossed config of the last options equals Hydra's composition of them
    crossed = copy.deepcopy(by_group["trainer"][TRAINERS[-1]])
    cross(crossed, by_group["logger"][LOGGERS[-1]], by_group["hparams_search"][SEARCHES[-1]])
    assert changed(full, crossed) == set()
    checked = 0
    try:
        for search in SEARCHES:
            # the sweep is read from Hydra's config, as in a run
            HydraConfig.instance().set_config(by_group["hparams_search"][search])
            for trainer in TRAINERS:
                cfg = copy.deepcopy(by_group["trainer"][trainer])
                for logger in LOGGERS:
                    cross(cfg, by_group["logger"][logger], by_group["hparams_search"][search])
                    preflight("train", cfg)
                    checked += 1
    finally:
        HydraConfig.instance().cfg = None
    assert checked == len(TRAINERS) * len(LOGGERS) * len(SEARCHES)


def test_the_paper_recipe_keeps_the_shipped_worker_count(nih_sample, monkeypatch):
    """``data.num_workers: auto`` as shipped reaches the data module (issue 19's defect): on a
    machine of 8 usable cores that is 7 workers (the main process keeps one), not 0 or 8."""
    import os

    from hydra.utils import instantiate

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for cfg in composed_jobs("train", ["experiment=densenet121", f"data.root={nih_sample}"]):
        assert cfg.data.num_workers == "auto"
        preflight("train", cfg)
        assert instantiate(cfg.data).num_workers == 7


def check(command: str, args: list[str]) -> int:
    """``chexnet-<command> <args> --check``, in this process: how many jobs were checked."""
    jobs = 0
    for cfg in composed_jobs(command, args):  # Hydra's run settings hold while a job is checked
        preflight(command, cfg)
        jobs += 1
    return jobs


def test_retrain_names_what_it_requires(nih_sample):
    with pytest.raises(ConfigError, match=r"init_from is required by experiment=retrain"):
        check("train", ["experiment=retrain", f"data.root={nih_sample}"])


@pytest.fixture(scope="module")
def command_inputs(tmp_path_factory, nih_sample) -> dict[str, list[str]]:
    """Each command's shipped config with the settings it cannot run without (as its --help
    examples give them); the check reads no checkpoint, image or archive."""
    folder = tmp_path_factory.mktemp("inputs")
    ckpt = folder / "best.ckpt"
    ckpt.write_bytes(b"not read by the check")
    image = next((nih_sample / "images").glob("*.png"))
    return {
        "evaluate": [f"ckpt={ckpt}"],
        "predict": [f"ckpt={ckpt}", f"image={image}"],
        "visualize": [f"ckpt={ckpt}", "label=Infiltration"],
        "localize": [f"ckpt={ckpt}", f"data.root={nih_sample}"],
        "export": [f"ckpt={ckpt}"],
        "serve": [f"ckpt={ckpt}"],
        "prepare": [f"root={nih_sample}"],
        "download": [f"root={folder / 'nih'}"],
    }


COMMANDS = ["evaluate", "predict", "visualize", "localize", "export", "serve", "prepare",
            "download"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_config_passes_the_preflight_check(command, command_inputs):
    args = command_inputs[command]
    assert check_overrides(command, args) == []
    assert check(command, args) == 1


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_without_its_required_settings_names_them(command):
    with pytest.raises(ConfigError) as error:
        check(command, [])
    assert all(p.startswith(("required setting not given:", "give ")) for p in error.value.problems)


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("predict", ["imag=x.png"], "imag is not a setting of chexnet-predict; did you mean image="),
        ("train", ["data.image_sise=64"], "data.image_sise is not a setting of chexnet-train; "
                                          "did you mean data.image_size=?"),
        ("train", ["+data.image_size=64"], "data.image_size is already a setting of chexnet-train: "
                                           "give data.image_size=64 (no +)"),
        ("train", ["experimant=demo"], "experimant is not a setting of chexnet-train; did you "
                                       "mean experiment=?"),
        ("train", ["experiment=densnet121"], "experiment=densnet121 is not an option of "
                                             "experiment; did you mean experiment=densenet121"),
        ("train", ["-m", "experiment=demo,resnt"], "experiment=resnt is not an option"),
        ("train", ["trainer.max_epoch=1"], "did you mean trainer.max_epochs=?"),
        ("evaluate", ["evaluation.bootstrap_sample=10"], "did you mean "
                                                          "evaluation.bootstrap_samples="),
        ("train", ["hydra.run.dri=x"], "did you mean hydra.run.dir=?"),
        ("prepare", ["~size"], None),
        ("prepare", ["~sise"], "sise is not a setting of chexnet-prepare; did you mean size=?"),
    ],
)  # fmt: skip
def test_a_mistyped_key_names_the_closest_ones(command, args, message):
    problems = check_overrides(command, args)
    if message is None:
        assert problems == []
    else:
        assert len(problems) == 1 and message in problems[0], problems


@pytest.mark.parametrize("check_only", [False, True])
def test_the_renamed_densenet_recipe_names_the_new_ones(check_only, nih_sample, caplog):
    """``experiment=densenet`` trained DenseNet-169 under a name that reads like the paper's
    DenseNet-121: it stops (status 2, one line, with ``--check`` too) naming the recipes that
    replace it, which compose to the backbones they name."""
    from chexnet_pl.command_runner import run_command

    args = ["experiment=densenet", f"data.root={nih_sample}", *(["--check"] if check_only else [])]
    with pytest.raises(SystemExit) as stop:
        run_command("train", lambda: pytest.fail("Hydra ran"), args, **TRAIN)
    assert stop.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "experiment=densenet169 or experiment=densenet201" in errors[0]
    for name in ("densenet169", "densenet201"):
        (cfg,) = list(composed_jobs("train", [f"experiment={name}", f"data.root={nih_sample}"]))
        assert cfg.model.backbone == name and name in cfg.tags


def test_keys_the_commands_own_file_sets_are_accepted_without_composing(monkeypatch):
    """``chexnet-predict ckpt=... image=...`` starts without a third composition; a group, a
    section's key from another file, ``+``, and a typo still go through the full check."""
    import chexnet_pl.overrides as overrides

    composed = []
    real = overrides._compose
    monkeypatch.setattr(overrides, "_compose", lambda *a: composed.append(a) or real(*a))
    assert check_overrides("predict", ["ckpt=a.ckpt", "image=x.png", "top_k=2"]) == []
    assert composed == []
    for args in (["ckpt=a.ckpt", "decode.max_pixels=100"], ["+ckpt=a.ckpt"], ["imag=x.png"],
                 ["paths=default"]):  # fmt: skip
        check_overrides("predict", args)
    assert len(composed) == 4
    assert "did you mean image=" in check_overrides("predict", ["ckpt=a", "imag=x.png"])[0]


def test_an_added_key_is_judged_by_its_component(nih_sample):
    """``+data.image_sise=64`` is a new key to Hydra: the data module names the one it meant."""
    args = [f"data.root={nih_sample}", "+data.image_sise=64"]
    assert check_overrides("train", args) == []
    with pytest.raises(ConfigError, match=r"^data.image_sise is not a setting; did you mean "
                                          r"data.image_size\?$"):  # fmt: skip
        check("train", args)


# -- slow tier: every recipe trains, with its shipped values --------------------------------
@pytest.fixture(scope="module")
def retrain_start(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("retrain") / "best.ckpt", image_size=224)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_recipe_trains_two_batches_with_its_shipped_values(
    experiment, nih_sample, retrain_start, tmp_path, monkeypatch
):
    """The recipe as shipped on the real sample, with only ``model.pretrained=false`` (no
    downloads in tests; ``retrain``: its ``init_from``). The trainer limits are not recipe
    values: they make a 20-epoch recipe one epoch of 2 batches (validation and test whole), so
    ten recipes take minutes, not days, on 2 cores."""
    from conftest import compose_train_config

    from chexnet_pl.train import train

    monkeypatch.setenv("CHEXNET_CACHE", str(tmp_path / "cache"))  # the demo writes its data there
    args = [f"experiment={experiment}", "model.pretrained=false"]
    if experiment != "demo":  # the demo's data is its own synthetic set (as `make demo` runs it)
        args.append(f"data.root={nih_sample}")
    if experiment == "retrain":
        args.append(f"init_from={retrain_start}")
    limits = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2"]
    cfg = compose_train_config(tmp_path / "run", [*args, *limits])
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    # the sample's 38 training images are fewer than 2 batches of 32 or 64 (drop_last): then 1
    assert trainer.global_step == min(2, trainer.num_training_batches) >= 1
    assert trainer.state.finished
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "run" / "aucs.csv").is_file()  # the shipped test=true evaluation ran
    shutil.rmtree(tmp_path / "run", ignore_errors=True)


# -- mapping-valued settings take Hydra's dict syntax (issue 29) -------------------------------
# Hydra composes in struct mode: `key={a: b}` merges into a mapping the YAML gives, so a key the
# shipped mapping lacks ("Could not override"). A mapping setting is therefore null (Hydra sets
# it) or an interpolation (Hydra replaces it), never `{}` or a literal mapping of user names.
EXPERT_MAP = {"Pneumothorax": ["Pneumothorax"], "Nodule or mass": ["Nodule", "Mass"],
              "Fracture": []}  # fmt: skip
CHECKSUMS = dict.fromkeys([f"images_{i:03d}" for i in range(1, 13)]
                          + ["data_entry", "bbox_list", "train_val_list", "test_list"])  # fmt: skip
MAPPING_SETTINGS = [
    ("train", ["data=chexpert"], "data.uncertain_by_label",
     "{Atelectasis: ones, Edema: ones, Cardiomegaly: zeros}",
     {"Atelectasis": "ones", "Edema": "ones", "Cardiomegaly": "zeros"}),
    ("train", ["data=mimic_cxr"], "data.uncertain_by_label", "{Edema: zeros}", {"Edema": "zeros"}),
    ("train", ["data=nih+chexpert"], "data.datasets.chexpert.uncertain_by_label", "{Edema: ones}",
     {"Edema": "ones"}),
    ("train", ["data=nih+chexpert"], "data.label_map", "{Mass: Lung Lesion}",
     {"Mass": "Lung Lesion"}),
    ("train", ["data=pooled"], "data.datasets.chexpert.uncertain_by_label", "{Edema: ones}",
     {"Edema": "ones"}),
    ("train", ["data=pooled"], "data.datasets.mimic_cxr.uncertain_by_label", "{Edema: zeros}",
     {"Edema": "zeros"}),
    ("train", ["data=pooled"], "data.label_map", "{Mass: Lung Lesion}", {"Mass": "Lung Lesion"}),
    ("train", [], "evaluation.label_map", "{Effusion: Pleural Effusion, Mass: Lung Lesion}",
     {"Effusion": "Pleural Effusion", "Mass": "Lung Lesion"}),
    ("evaluate", [], "evaluation.label_map", "{Mass: Lung Lesion}", {"Mass": "Lung Lesion"}),
    ("localize", [], "label_map", "{Effusion: Pleural effusion}", {"Effusion": "Pleural effusion"}),
    ("evaluate", [], "expert_map", "{Airspace opacity: [Consolidation, Atelectasis]}",
     {**EXPERT_MAP, "Airspace opacity": ["Consolidation", "Atelectasis"]}),  # its four findings
    ("train", [], "requires", "{init_from: the run to start from}",
     {"init_from": "the run to start from"}),
    ("download", [], "checksums", "{images_001: abc123, data_entry: def456}",
     {**CHECKSUMS, "images_001": "abc123", "data_entry": "def456"}),
]  # fmt: skip
MAPPING_NAME = ("_map", "_by_label", "checksums", "requires")


def _composed(command: str, *overrides: str):
    from conftest import compose_config

    return compose_config(command, None, *overrides)


@pytest.mark.parametrize(("command", "extra", "key", "text", "expected"), MAPPING_SETTINGS,
                         ids=[f"{c}:{k}" for c, _, k, _, _ in MAPPING_SETTINGS])  # fmt: skip
def test_every_mapping_setting_takes_hydras_dict_syntax(command, extra, key, text, expected):
    from omegaconf import OmegaConf

    cfg = _composed(command, *extra, f"{key}={text}")  # before: "Could not override"
    value = OmegaConf.select(cfg, key)
    assert OmegaConf.to_container(value, resolve=True) == expected


@pytest.mark.parametrize(
    ("command", "extra"),
    [("train", [f"data={option}"]) for option in options("data")]
    + [(command, []) for command in ["evaluate", *COMMANDS[1:]]],
)
def test_the_list_of_mapping_settings_is_every_one_shipped(command, extra):
    """Every setting named like a mapping is in MAPPING_SETTINGS, and no shipped setting is an
    empty mapping (which Hydra's dict syntax can never fill)."""
    from omegaconf import DictConfig

    from chexnet_pl.overrides import all_keys

    cfg = _composed(command, *extra)
    tested = {key for c, _, key, _, _ in MAPPING_SETTINGS if c == command}
    for key in all_keys(cfg):
        if key.startswith("hydra."):
            continue
        node = cfg
        for part in key.split("."):
            node = node._get_node(part)
        assert not (isinstance(node, DictConfig) and len(node) == 0), f"{key}: {{}} (write null)"
        if key.split(".")[-1].endswith(MAPPING_NAME):
            assert key in tested, f"{command} {extra}: {key} is a mapping setting not tested here"


def test_the_readmes_checksum_example_is_a_setting():
    """The Data page: ``checksums.images_001=<sha256>`` (before: Hydra's "Could not override")."""
    from omegaconf import OmegaConf

    assert "`checksums.images_001=<sha256>`" in (REPO / "docs" / "data.md").read_text()
    cfg = _composed("download", "checksums.images_001=abc123")
    assert OmegaConf.to_container(cfg.checksums) == {**CHECKSUMS, "images_001": "abc123"}


def test_the_readmes_per_label_uncertainty_example_runs_as_written(chexpert_root, caplog):
    """The Data page: `'data.uncertain_by_label={Atelectasis: ones, ...}'`, as written, passes
    ``--check`` (before: Hydra's "Could not override", and a traceback from --check); a policy
    that does not exist is one line and exit 2."""
    import re

    from chexnet_pl.command_runner import run_command

    readme = (REPO / "docs" / "data.md").read_text()
    example = re.search(r"'(data\.uncertain_by_label=\{[^']*\})'", readme).group(1)
    assert (
        example == "data.uncertain_by_label={Atelectasis: ones, Edema: ones, Cardiomegaly: zeros}"
    )

    def hydra_main():
        raise AssertionError("Hydra's main ran")

    base = ["data=chexpert", f"data.root={chexpert_root}"]
    with pytest.raises(SystemExit) as exit_info:
        run_command("train", hydra_main, [*base, example, "--check"], **TRAIN)
    assert exit_info.value.code == 0, caplog.text
    with pytest.raises(SystemExit) as exit_info:
        run_command("train", hydra_main, [*base, "data.uncertain_by_label={Edema: maybe}",
                                          "--check"], **TRAIN)  # fmt: skip
    assert exit_info.value.code == 2
    assert "data.uncertain_by_label.Edema='maybe'; use one of" in caplog.text
    caplog.clear()  # what Hydra refuses is one line from --check too, not a traceback
    with pytest.raises(SystemExit) as exit_info:
        run_command("train", hydra_main, [*base, "data.augment={flip: 0.5}", "--check"], **TRAIN)
    assert exit_info.value.code == 2
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "Could not override 'data.augment'. To append to your config use +data.augment={flip: 0.5}"
    ]


@pytest.mark.parametrize("option", ["cpu", "gpu", "ddp"])
def test_shipped_reads_a_group_file_over_the_options_its_defaults_name(tmp_path, option):
    """``shipped("trainer", "cpu")`` is trainer/cpu.yaml over trainer/auto.yaml, the section Hydra
    composes for ``trainer=cpu`` (before: cpu.yaml's own keys alone, without auto.yaml's)."""
    from conftest import compose_config
    from omegaconf import OmegaConf

    from chexnet_pl.config_defaults import shipped

    cfg = compose_config("train", tmp_path, f"trainer={option}")
    composed = OmegaConf.to_container(cfg.trainer, resolve=True)
    del composed["_target_"], composed["default_root_dir"]  # the run folder: None outside a run
    given = shipped("trainer", option)
    assert given.pop("default_root_dir") is None and given == composed
    assert "max_epochs" in given  # a key of auto.yaml only
