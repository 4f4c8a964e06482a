"""Per-epoch training state, so that an interrupted run resumes to the same final weights.

The state holds the model, optimizer and scheduler, the trainer's own extra state (AMP scaler,
synthesizer queues, ...), the RNG states of python/numpy/torch (and CUDA), the data loader's shuffling
generator, the number of finished epochs and the per-epoch history.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..utils.io import write_with


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
        torch.cuda.set_rng_state_all(states["cuda"])
    if generator is not None and "loader" in states:
        generator.set_state(states["loader"])


def save_training_state(path: Path, net: torch.nn.Module, epoch: int, optim_state: dict, trainer,
                        generator: torch.Generator | None, history: list[dict]) -> None:
    blob = {"epoch": epoch, "model": net.state_dict(), **optim_state,
            "trainer": trainer.state_dict() if hasattr(trainer, "state_dict") else {},
            "rng": rng_states(generator), "history": history}
    write_with(path, lambda tmp: torch.save(blob, tmp))


def load_training_state(path: Path, net: torch.nn.Module, trainer, generator: torch.Generator | None) -> dict:
    """Restore model, trainer extras and RNGs from ``path``; return the blob (epoch, optimizer, scheduler, history)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        net.load_state_dict(blob["model"])
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot resume from this training state ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if hasattr(trainer, "load_state_dict"):
        trainer.load_state_dict(blob.get("trainer", {}))
    restore_rng_states(blob["rng"], generator)
    return blob
