"""The branches taken only on a CUDA GPU, driven on a CPU: each is chosen by a small function of
a ``DeviceCaps``, and these tests pass faked ones (no GPU is needed, none is used)."""

from __future__ import annotations

import pytest
import torch

from chexnet_pl.config_defaults import shipped
from chexnet_pl.data.batch_augment import choose_warp
from chexnet_pl.data.device_loader import choose_loader
from chexnet_pl.device import DeviceCaps, backend_flags, detect_caps, free_memory, pin_memory
from chexnet_pl.models.precision import autocast_dtype, resolve_precision
from chexnet_pl.training.trainer_settings import trainer_kwargs

AMPERE = DeviceCaps(cuda=True, cuda_bf16=True, cpu_bf16=False)
VOLTA = DeviceCaps(cuda=True, cuda_bf16=False, cpu_bf16=False)  # a GPU without bf16
CPU = DeviceCaps(cuda=False, cuda_bf16=False, cpu_bf16=False)
CPU_BF16 = DeviceCaps(cuda=False, cuda_bf16=False, cpu_bf16=True)  # AVX512-BF16 / AMX


def test_precision_auto_follows_the_device():
    assert resolve_precision("auto", "gpu", AMPERE) == "bf16-mixed"
    assert resolve_precision("auto", "auto", VOLTA) == "16-mixed"
    assert resolve_precision("auto", "cpu", AMPERE) == "32-true"  # a CPU run on a GPU host
    assert resolve_precision("auto", "auto", CPU) == "32-true"  # emulated bf16 would be slower
    assert resolve_precision("auto", "auto", CPU_BF16) == "bf16-mixed"
    assert resolve_precision("fp16", "auto", CPU) == "16-mixed"  # an explicit one is kept


def test_inference_autocast_follows_the_device():
    assert autocast_dtype("cuda", "auto", AMPERE) is torch.bfloat16
    assert autocast_dtype("cuda", "bf16", VOLTA) is torch.float16  # no bf16 on that GPU
    assert autocast_dtype("cuda", "auto", VOLTA) is torch.float16
    assert autocast_dtype("cpu", "16-mixed", CPU) is None  # fp16 on a CPU: slower than fp32
    assert autocast_dtype("cpu", "auto", CPU_BF16) is torch.bfloat16


@pytest.mark.parametrize("preset", ["auto", "cpu", "gpu", "ddp"])
def test_the_shipped_trainer_presets_on_a_gpu_and_on_a_cpu(preset):
    """What each conf/trainer/<preset>.yaml becomes on an Ampere GPU host and on a CPU host."""
    from omegaconf import OmegaConf

    from chexnet_pl.command_runner import config_dir

    section = OmegaConf.load(config_dir() / "trainer" / f"{preset}.yaml")
    for parent in section.pop("defaults", []):
        section = OmegaConf.merge(OmegaConf.load(config_dir() / "trainer" / f"{parent}.yaml"),
                                  section)  # fmt: skip
    values = OmegaConf.to_container(section)
    values["default_root_dir"] = "run"
    on_gpu, on_cpu = trainer_kwargs(values, AMPERE), trainer_kwargs(values, CPU)
    assert on_gpu["precision"] == ("32-true" if preset == "cpu" else "bf16-mixed")
    assert on_cpu["precision"] == "32-true"
    assert on_gpu.get("sync_batchnorm", False) is (preset == "ddp")
    assert on_cpu.get("sync_batchnorm", False) is False  # needs GPUs


def test_data_placement_and_warp_follow_the_device():
    assert AMPERE.device == torch.device("cuda") and CPU.device == torch.device("cpu")
    assert pin_memory(True, AMPERE) is True and pin_memory(True, CPU) is False
    assert pin_memory(False, AMPERE) is False
    assert choose_warp("auto", "cuda") == "grid" and choose_warp("auto", "cpu") == "opencv"
    assert choose_warp("grid", "cpu") == "grid"  # an explicit choice is kept
    assert backend_flags(AMPERE) == {"cudnn_benchmark": True, "float32_matmul_precision": "high"}
    assert backend_flags(CPU) == {}


def test_free_gpu_memory_decides_the_device_path():
    cuda = torch.device("cuda")
    gib = 2**30

    def mem_get_info(device):
        assert device == cuda
        return 10 * gib, 80 * gib

    free = free_memory(cuda, mem_get_info)
    assert free == 10 * gib
    share = shipped("data", root=".")["device_memory_share"]
    fits = choose_loader("auto", True, int(4 * gib), cuda, share, 1, free)
    assert fits[0] == "device" and "of the 10.74 GB free on cuda" in fits[1]
    too_big = choose_loader("auto", True, int(6 * gib), cuda, share, 1, free)
    assert too_big[0] == "workers" and "more than data.device_memory_share" in too_big[1]
    assert choose_loader("auto", True, gib, cuda, share, 8, free)[0] == "workers"  # DDP
    with pytest.raises(ValueError, match="no valid prepared cache"):
        choose_loader("device", False, gib, cuda, share, 1, free)


def test_this_machine_is_described_as_it_is():
    caps = detect_caps()
    assert caps.cuda is torch.cuda.is_available()
    assert caps.device.type == ("cuda" if caps.cuda else "cpu")
