"""Deep ensembles (Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles", NeurIPS 2017; OpenOOD v1.5's ``ensemble``): the predictive distribution
averaged over independently trained networks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..networks.checkpoint import network_from_checkpoint
from ..schema import Length
from .base import Postprocessor
from .dropout import average_prediction, max_probability_scores
from .registry import POSTPROCESSORS


def _classes(net: nn.Module) -> int | None:
    fc = getattr(net, "get_fc_layer", None)
    return int(fc().out_features) if callable(fc) else None


def _same_network(a, b) -> bool:
    """Names of one registered network (aliases included)."""
    from ..networks import NETWORKS
    try:
        return NETWORKS.get(a) is NETWORKS.get(b)
    except Exception:  # noqa: BLE001 - an unknown name: compare the text
        return a == b


def member_mismatch(member: nn.Module, member_spec: dict | None, net: nn.Module, spec: dict) -> str | None:
    """What makes ``member`` unfit to average with ``net`` (configured as ``spec``): another architecture
    (network name, or a parameter of another shape) or class count; None when it fits."""
    if member_spec is not None and spec.get("name") and not _same_network(member_spec.get("name"), spec["name"]):
        return f"is a '{member_spec.get('name')}' network, the run's network is '{spec.get('name')}'"
    ours, theirs = _classes(net), _classes(member)
    if ours is not None and theirs is not None and ours != theirs:
        return f"has {theirs} classes, the run's network {ours}"
    own, other = net.state_dict(), member.state_dict()
    if set(own) != set(other):
        diff = sorted(set(own) ^ set(other))
        return f"has other layers than the run's network (e.g. {diff[:2]})"
    for key, value in own.items():
        if other[key].shape != value.shape:
            return f"has {key} of shape {tuple(other[key].shape)}, the run's network {tuple(value.shape)}"
    return None


def load_member(path: str, net: nn.Module, spec: dict, index: int) -> tuple[nn.Module, dict | None]:
    """Member ``index`` rebuilt from its checkpoint (its own stored spec; a plain state dict is loaded
    into the run's architecture) and that spec (None for a plain state dict); ValueError naming the file
    and what differs from ``net``."""
    where = f"checkpoints[{index}] {path}"
    try:
        member, member_spec = network_from_checkpoint(path, like=net)
    except CheckpointError as exc:
        raise ValueError(f"{where}: {str(exc).removeprefix(str(path) + ': ')}") from None
    why = member_mismatch(member, member_spec, net, spec)
    if why:
        raise ValueError(f"{where} {why}")
    return member, member_spec


class StackedMembers:
    """Members of one architecture run as one vectorised call (``torch.func.vmap`` over their stacked
    parameters and buffers): one batched pass instead of M. Falls back to running them one by one where
    the network's operations do not vectorise."""

    def __init__(self, members: list[nn.Module], stack: bool):
        self.members = members
        self.stacked = None
        if stack and len(members) > 1:
            import copy

            from torch.func import stack_module_state
            self.params, self.buffers = stack_module_state(members)
            self.stacked = copy.deepcopy(members[0]).to("meta")  # the structure; weights come from the stack

    def _call(self, params, buffers, images):
        from torch.func import functional_call
        return functional_call(self.stacked, (params, buffers), (images,))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [M, B, C] of every member on ``images``."""
        if self.stacked is not None:
            try:
                return torch.vmap(self._call, in_dims=(0, 0, None))(self.params, self.buffers, images)
            except Exception:  # noqa: BLE001 - an operation without a batching rule: run the members in turn
                self.stacked = None
        return torch.stack([member(images) for member in self.members])


@POSTPROCESSORS.register("ensemble", aliases=["deep_ensemble"])
class EnsemblePostprocessor(Postprocessor):
    """Deep ensemble: conf = max_c (1/M) sum_m softmax(f_m(x))_c over the M member networks; higher = more ID.

    Args:
        checkpoints: the members' checkpoint files (each rebuilt from the network spec it stores, see
            ``networks/checkpoint.py``; a plain state dict is loaded into the run's architecture). Every
            member must be the run's architecture with its class count (checked before the run). The
            run's own network is not a member unless its checkpoint is listed.
        average: ``probs`` (default): mean of the members' softmax outputs, the paper's ensemble;
            ``logits``: softmax of the mean logits, as OpenOOD's code.
    Predictions are the argmax of the averaged distribution. Each batch is read once and run through
    every member in one vectorised call (:class:`StackedMembers`) when the members share one network spec.
    """

    needs_network = True

    def __init__(self, checkpoints: Annotated[list[str], Length(1)],
                 average: Literal["probs", "logits"] = "probs"):
        self.checkpoints = [str(c) for c in checkpoints]
        self.average = average
        self._members: StackedMembers | None = None
        self.net = self.device = None

    @property
    def passes_per_sample(self) -> int:
        """Network passes per scored sample (the bench counts this method against M plain passes)."""
        return len(self.checkpoints)

    @staticmethod
    def check_network(spec: dict, net: nn.Module, network_spec: dict) -> None:
        """Before the run: every member checkpoint exists, loads, and fits the configured network."""
        for i, path in enumerate(spec.get("checkpoints") or []):
            if not Path(path).is_file():
                raise ValueError(f"checkpoints[{i}] {path}: no such checkpoint file")
            load_member(path, net, network_spec, i)

    def attach_network(self, net, device, loaders=None):
        super().attach_network(net, device, loaders)
        spec = {"name": getattr(type(net), "_registry_name", None)}
        try:
            loaded = [load_member(p, net, spec, i) for i, p in enumerate(self.checkpoints)]
        except ValueError as exc:
            raise ConfigError(f"postprocessor 'ensemble': {exc}") from None
        specs = [member_spec for _, member_spec in loaded]
        members = [member.to(device).requires_grad_(False) for member, _ in loaded]
        self._members = StackedMembers(members, stack=all(sp == specs[0] for sp in specs))

    def predictive(self, images: torch.Tensor) -> torch.Tensor:
        """Predictive probabilities [B, C] (float64) of one batch: every member on the same batch."""
        with torch.no_grad():
            logits = self._members(images)
        return average_prediction(logits, self.average)

    def score_loader(self, loader) -> tuple[np.ndarray, np.ndarray]:
        if self._members is None:
            raise RuntimeError("ensemble: attach_network() must be called before scoring")
        return max_probability_scores(self.predictive, loader, self.device, "ensemble")
