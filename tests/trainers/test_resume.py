"""Resuming on another machine: CUDA random states saved for more (or fewer) GPUs than this one has."""

from __future__ import annotations

import logging

import pytest
import torch

from openood_ext.trainers.resume import restore_rng_states, rng_states


@pytest.fixture
def gpus(monkeypatch):
    """A machine with ``n`` GPUs as far as the RNG calls can tell; records which states are restored."""
    restored = {}

    def machine(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state))
        monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                            lambda states: [restored.__setitem__(i, s) for i, s in enumerate(states)]
                            if len(states) <= n else (_ for _ in ()).throw(IndexError("list index out of range")))
        return restored
    return machine


@pytest.mark.parametrize("saved, here", [(4, 2), (1, 2), (2, 2)])
def test_cuda_states_restore_for_the_gpus_both_machines_have(gpus, caplog, saved, here):
    states = rng_states(None)
    states["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(saved)]
    restored = gpus(here)
    with caplog.at_level(logging.WARNING, logger="openood_ext"):
        restore_rng_states(states, None)
    assert sorted(restored) == list(range(min(saved, here)))
    assert all(int(restored[i][0]) == i for i in restored)
    warned = [r.getMessage() for r in caplog.records if "CUDA random states" in r.getMessage()]
    assert bool(warned) == (saved != here)
    if warned:
        assert f"for {saved} GPU(s), this machine has {here}" in warned[0]
