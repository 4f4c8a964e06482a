"""Random-number-generator states saved with every training state, so a resumed run draws the same
augmentations, shuffles and noise as an uninterrupted one (python, numpy, torch, CUDA, loader)."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch


def rng_states(generator: torch.Generator | None) -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        states["loader"] = generator.get_state()
    return states


def restore_rng_states(states: dict, generator: torch.Generator | None) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        restore_cuda_rng_states(states["cuda"])
    if generator is not None and "loader" in states:
        generator.set_state(states["loader"])


def restore_cuda_rng_states(saved: list) -> None:
    """Restore one CUDA RNG state per GPU that this machine has and the saved run had; a state saved on a
    machine with more (or fewer) GPUs is restored for the GPUs both have, with a warning that the draws
    on the others differ from an uninterrupted run (torch's ``set_rng_state_all`` raises an IndexError)."""
    here = torch.cuda.device_count()
    for index, state in enumerate(saved[:here]):
        torch.cuda.set_rng_state(state, index)
    if len(saved) != here:
        logging.getLogger("openood_ext").warning(
            "resume: the training state holds CUDA random states for %d GPU(s), this machine has %d; restored "
            "%d (random draws on the other GPUs differ from the uninterrupted run)", len(saved), here,
            min(len(saved), here))
