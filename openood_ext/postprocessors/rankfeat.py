"""RankFeat: rank-1 feature removal (Song, Sebe & Wang, "RankFeat: Rank-1 Feature Removal for
Out-of-distribution Detection", NeurIPS 2022), with the paper's fusion of two blocks as in OpenOOD v1.5.

RankFeat edits intermediate feature maps and continues the forward pass from them, so it re-runs the
network (``needs_network``; no gradient). All edited passes of a batch go through the network together:
at the first edited layer the batch is copied once per edited layer (copy j is edited at layer j), so
the layers before it run once and every later layer runs on the stacked copies.
"""

from __future__ import annotations

import numpy as np
import torch

from ..features import split_tap_layer
from ..schema import PositiveFloat
from .base import Postprocessor
from .common import energy
from .layer_features import first_batch, iter_images, resolve_layers
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
    """

    needs_network = True

    def __init__(self, layers=(-3, -2), temperature: PositiveFloat = 1.0):
        layers = [layers] if isinstance(layers, (str, int)) else list(layers)
        if not layers:
            raise ValueError("rankfeat: layers must name at least one layer")
        self.layers, self.temperature = layers, float(temperature)
        self.layer_names: list[str] | None = None
        self.net = self.device = self.loaders = None

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
