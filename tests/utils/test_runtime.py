"""resolve_device on GPU machines (CUDA queries mocked): torchrun ranks and GPUs that do not exist."""

from __future__ import annotations

import pytest
import torch

from openood_ext.errors import ConfigError
from openood_ext.utils.runtime import resolve_device


@pytest.fixture
def gpus(monkeypatch):
    def machine(n, world=None, local=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        if world is not None:
            monkeypatch.setenv("WORLD_SIZE", str(world))
            monkeypatch.setenv("LOCAL_RANK", str(local))
        else:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
            monkeypatch.delenv("LOCAL_RANK", raising=False)
    return machine


def test_torchrun_ranks_take_their_own_gpu(gpus):
    gpus(2, world=2, local=1)
    assert resolve_device("auto") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda:1")
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("spec", ["auto", "cuda"])
def test_more_torchrun_processes_than_gpus_is_one_line(gpus, spec):
    gpus(2, world=4, local=3)
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=3 .* 2 visible GPU\(s\); run torchrun with "
                                          r"--nproc_per_node <= 2") as info:
        resolve_device(spec)
    assert "\n" not in str(info.value)


def test_a_gpu_index_beyond_the_visible_ones_is_one_line(gpus):
    gpus(1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"device: 'cuda:3' does not exist: 1 GPU\(s\) are visible"):
        resolve_device("cuda:3")
