"""Saving and loading network checkpoints with errors that name the file and the mismatch.

Format written here: ``{"format": "openood_ext/1", "network": <network config>, "state_dict": ...,
"meta": {...}}``. Plain state dicts (OpenOOD's ``.ckpt`` files) load too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError
from ..utils.io import write_stream

FORMAT = "openood_ext/1"


def save_checkpoint(path: str | Path, net: torch.nn.Module, network_cfg: Mapping[str, Any],
                    meta: Mapping[str, Any] | None = None) -> None:
    blob = {"format": FORMAT, "network": dict(network_cfg), "state_dict": net.state_dict(),
            "meta": dict(meta or {})}
    write_stream(path, lambda fh: torch.save(blob, fh))


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a checkpoint file, ``meta["network"]`` the network spec it was saved with
    (None for a plain state dict). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = str(exc).splitlines()[0].split(". ")[0]  # torch's advice paragraph is not the cause
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {why})") from None
    if isinstance(blob, Mapping) and "state_dict" in blob:
        state, meta = blob["state_dict"], dict(blob.get("meta", {}))
        meta["network"] = blob.get("network")
    elif isinstance(blob, Mapping):
        state, meta = blob, {"network": None}
    else:
        raise CheckpointError(f"{path}: expected a state dict, found {type(blob).__name__}")
    return state, meta


def load_checkpoint(path: str | Path, net: torch.nn.Module) -> dict:
    """Load weights into ``net``; return the checkpoint's meta dict. Raises CheckpointError."""
    path = Path(path)
    state, meta = read_checkpoint(path)
    if meta.get("network") is None:
        meta.pop("network")
    load_state(path, net, state)
    return meta


def load_state(path: Path, net: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict read from ``path`` into ``net``; CheckpointError naming the file on a mismatch."""
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel checkpoints
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not fit network {type(net).__name__} "
            f"(missing {len(missing)} keys, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise CheckpointError(
            f"{path}: checkpoint does not fit network {type(net).__name__}: {k} has shape {got}, "
            f"network expects {want} (different architecture or number of classes?)")
    net.load_state_dict(state)


def load_network(spec: Mapping[str, Any], device: torch.device | str = "cpu") -> torch.nn.Module:
    """A frozen network in eval mode from a NETWORKS spec whose ``checkpoint`` key names its weights
    (e.g. VMDLS's autoencoder: ``{name: ae_mnist_conv, checkpoint: path, ...}``)."""
    from ..errors import ConfigError
    from . import NETWORKS
    spec = dict(spec)
    ckpt = spec.pop("checkpoint", None)
    if not ckpt:
        raise ConfigError(f"network {spec.get('name')!r}: a checkpoint is needed ({{name: ..., checkpoint: path}})")
    net = NETWORKS.build(spec)
    load_checkpoint(ckpt, net)
    return net.to(device).eval().requires_grad_(False)


def network_from_checkpoint(path: str | Path, like: torch.nn.Module | None = None) -> tuple[torch.nn.Module, dict | None]:
    """``(network, its spec)`` a checkpoint stores: rebuilt from the saved spec with the weights loaded, in eval
    mode on the CPU. A plain state dict (no spec) is loaded into a copy of ``like`` (spec None); without
    ``like`` that is a CheckpointError."""
    import copy

    from . import NETWORKS
    state, meta = read_checkpoint(path)
    spec = meta.get("network")
    if spec is None:
        if like is None:
            raise CheckpointError(f"{path}: a plain state dict without the network spec; give the network")
        net = copy.deepcopy(like).cpu()
    else:
        net = NETWORKS.build(dict(spec))
    load_state(Path(path), net, state)
    return net.eval(), (dict(spec) if spec is not None else None)
