"""RankFeat: rank-1 feature removal (Song, Sebe & Wang, "RankFeat: Rank-1 Feature Removal for
Out-of-distribution Detection", NeurIPS 2022), with the paper's fusion of two blocks as in OpenOOD v1.5.

RankFeat edits intermediate feature maps and continues the forward pass from them (no gradient). Where
the network after each edited layer is a chain of its later stages, a flatten and its last linear layer
(ResNets: ``layer3`` -> ``layer4`` -> ``avgpool`` -> ``fc``; checked on an example batch), RankFeat rides
the shared forward pass: a layer tap edits the map and runs only that tail. Otherwise it re-runs the
network on its own: at the first edited layer the batch is copied once per edited layer (copy j is
edited at layer j), so the layers before it run once and every later layer runs on the stacked copies.
"""

from __future__ import annotations

import numpy as np
import torch

from ..features import Tap, split_tap_layer
from ..schema import PositiveFloat
from .base import Postprocessor
from .common import energy
from .layer_features import LayerTaps, first_batch, iter_images, resolve_layers, stage_layers
from .registry import POSTPROCESSORS


def remove_rank1(feat: torch.Tensor) -> torch.Tensor:
    """``X - s_1 u_1 v_1^T`` per sample, X the [C, H*W] matrix of a [B, C, H, W] map (exact SVD)."""
    b, c = feat.shape[:2]
    x = feat.reshape(b, c, -1)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return (x - s[:, :1, None] * u[:, :, :1] @ vh[:, :1, :]).reshape(feat.shape)


class _StackedEdits:
    """Forward hooks that stack one copy of the batch per edited layer and edit copy j at layer j."""

    def __init__(self, net: torch.nn.Module, names: list[str]):
        modules = dict(net.named_modules())
        self.net, self.m, self.handles, self.fired, self.batch = net, len(names), [], 0, 0
        for name in names:
            module, on_input = split_tap_layer(name)
            if on_input:
                self.handles.append(modules[module].register_forward_pre_hook(
                    lambda _m, inputs: (self._edit(inputs[0]), *inputs[1:])))
            else:
                self.handles.append(modules[module].register_forward_hook(lambda _m, _i, out: self._edit(out)))

    def _edit(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 4:
            raise ValueError(f"rankfeat edits [B, C, H, W] feature maps; a tapped layer gave {tuple(t.shape)}")
        j, self.fired = self.fired, self.fired + 1
        if j == 0:  # the first edited layer: stack the copies
            self.batch = len(t)
            return torch.cat([remove_rank1(t), *[t] * (self.m - 1)])
        rows = slice(j * self.batch, (j + 1) * self.batch)
        out = t.clone()
        out[rows] = remove_rank1(t[rows])
        return out

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The mean over the edited copies of the logits, [B, C]."""
        self.fired = 0
        out = self.net(images)
        if self.fired != self.m:
            raise ValueError(f"rankfeat: {self.fired} of the {self.m} edited layers ran in the forward pass")
        return out.reshape(self.m, len(images), -1).mean(dim=0)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class _Tail:
    """The network after one of its stages, as the chain of the later stages, a flatten and the last
    linear layer (``net.get_fc_layer()``): ``tail(map) -> logits``. :func:`chained_tails` checks it."""

    def __init__(self, net: torch.nn.Module, stages: list[str], start: str):
        modules = dict(net.named_modules())
        self.later = [modules[name] for name in stages[stages.index(start) + 1:]]
        self.fc = net.get_fc_layer()

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        for module in self.later:
            h = module(h)
        return self.fc(h.flatten(1))


def chained_tails(net: torch.nn.Module, layers: list[str], example: torch.Tensor) -> list[_Tail] | None:
    """One :class:`_Tail` per edited layer when each one, applied to that layer's map of ``example``,
    gives the network's logits (float rounding aside); None when some does not (a layer that is not a
    stage, modules between stages, a functional step the chain misses, no ``get_fc_layer``)."""
    if not callable(getattr(net, "get_fc_layer", None)):
        return None
    stages = stage_layers(net, example)
    if any(layer not in stages for layer in layers):
        return None
    tails = [_Tail(net, stages, layer) for layer in layers]
    with torch.no_grad():
        with LayerTaps(net, layers, transform=lambda t: t.clone()) as taps:
            logits = net(example)
            maps = taps.pop()
        try:
            ok = all(torch.allclose(tail(h), logits, rtol=1e-4, atol=1e-5) for tail, h in zip(tails, maps))
        except (RuntimeError, ValueError):  # a later stage that does not take the map as it comes
            ok = False
    return tails if ok else None


class _TailScores:
    """Scores a split from the shared pass's taps: each edited layer's tap removes the rank-1 component of
    its map and runs the tail; ``finish()`` is T logsumexp(mean of the edited logits / T), float64 [N]."""

    def __init__(self, pp: RankFeatPostprocessor):
        self.pp, self.confs = pp, []
        self.taps = [Tap(layer, "rankfeat", lambda t, tail=tail: tail(remove_rank1(t)))
                     for layer, tail in zip(pp.layer_names, pp._tails)]

    def update(self, reduced, logits, labels):
        edited = torch.stack([reduced[t.key] for t in self.taps])
        self.confs.append(energy(edited.mean(dim=0).cpu(), self.pp.temperature))

    def finish(self) -> np.ndarray:
        return torch.cat(self.confs).numpy() if self.confs else np.zeros(0)


@POSTPROCESSORS.register("rankfeat")
class RankFeatPostprocessor(Postprocessor):
    """RankFeat: conf = T logsumexp(mean_l f_l(x) / T), f_l the logits with layer l's rank-1 component removed; higher = more ID.

    Each listed layer's [C, H*W] feature map loses ``s_1 u_1 v_1^T`` (its largest singular value's
    component), and the forward pass continues from the edited map; the logits of the edited passes
    (one per layer) are averaged.

    Args:
        layers: the edited layers (default ``[-3, -2]``: the two stages before the global pool; on a
            ResNet ``layer3`` and ``layer4``, the paper's and OpenOOD's Block 3 + Block 4 fusion); see
            ``layer_features.resolve_layers``. Each must give a 4-D map and run once per forward pass.
        temperature: T of the energy score (OpenOOD default 1).
    The network must treat the samples of a batch independently (eval mode), as the copies share it.
    OpenOOD's optional power-iteration approximation of the SVD (``accelerate``) is not offered.
    On a network whose tail after the edited layers is a chain (see the module docstring) it rides the
    shared forward pass (``uses_taps``; the scores equal those of its own passes up to float rounding).
    """

    needs_network = True
    #: it runs network layers of its own (the tails of the edited maps), though no gradient
    reruns_layers = True

    def __init__(self, layers=(-3, -2), temperature: PositiveFloat = 1.0):
        layers = [layers] if isinstance(layers, (str, int)) else list(layers)
        if not layers:
            raise ValueError("rankfeat: layers must name at least one layer")
        self.layers, self.temperature = layers, float(temperature)
        self.layer_names: list[str] | None = None
        self._tails: list[_Tail] | None = None
        self.net = self.device = self.loaders = None

    @property
    def uses_taps(self) -> bool:
        """Whether it rides the shared pass: until a network is attached, assumed; then whether the
        network has a chained tail after every edited layer (:func:`chained_tails`)."""
        return self.net is None or self._tails is not None

    def attach_network(self, net, device, loaders=None) -> None:
        super().attach_network(net, device, loaders)
        self._tails = None
        if loaders is None:
            return
        try:  # probe the network on two images of the training split
            example = first_batch(loaders("id_train"))[:2].to(device)
        except (KeyError, ValueError):  # no training split to probe with: its own passes, as always
            return
        self.layer_names = resolve_layers(net, self.layers, example)
        self._tails = chained_tails(net, self.layer_names, example)

    def fit_taps(self, net: torch.nn.Module, example: torch.Tensor) -> None:
        """Resolve the edited layers and find the tails after them, unless attaching this network did
        (nothing to fit)."""
        if self.layer_names is None or net is not self.net:
            self.layer_names = resolve_layers(net, self.layers, example)
            self._tails = chained_tails(net, self.layer_names, example)
        return None

    def score_taps(self) -> _TailScores:
        """A consumer of a split's shared pass whose ``finish()`` is its confidences (float64 [N])."""
        if self._tails is None:
            raise RuntimeError("rankfeat: no chained tail after the edited layers (fit_taps on this network "
                               "found none): score with score_loader")
        return _TailScores(self)

    def fit(self, train_outputs=None, val_outputs=None, **_):
        return self

    @torch.no_grad()
    def score_loader(self, loader) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("rankfeat: attach_network(net, device, loaders) first")
        self.net.eval()
        if self.layer_names is None:
            self.layer_names = resolve_layers(self.net, self.layers, first_batch(loader)[:2].to(self.device))
        edits = _StackedEdits(self.net, self.layer_names)
        try:
            confs = [energy(edits.logits(images).cpu(), self.temperature) for images, _ in
                     iter_images(loader, self.device, desc="rankfeat")]
        finally:
            edits.close()
        return torch.cat(confs).numpy() if confs else np.zeros(0)
