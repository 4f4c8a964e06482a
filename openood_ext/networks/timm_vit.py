"""A timm Vision Transformer as a :class:`Classifier` (OAML's teacher; fine-tunable with the engine).

``timm_vit``: ``timm.create_model(model, pretrained=False, **kwargs)`` -- never downloads. Weights come
from ``network.checkpoint`` (this toolkit's format) or, for the OAML teacher, from a local timm/HF
``pytorch_model.bin`` / ``.safetensors`` state dict (:func:`load_timm_weights`).

Inputs are resized (bilinear) to ``img_size`` when they differ (a 32x32 CIFAR tensor is fed to a 224-px ViT
as OAML feeds its 224-px tensor to both networks). Features = the class token after the final LayerNorm
(timm ``forward_head(..., pre_logits=True)``, the 768-d ``pre_logits`` OAML distils), logits = ``fc``.
A tiny offline teacher: ``model: vit_tiny_patch16_224, img_size: 32, patch_size: 8, embed_dim: 32,
depth: 2, num_heads: 2``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .registry import NETWORKS
from .small_cnn import Classifier


@NETWORKS.register("timm_vit")
class TimmViT(Classifier):
    def __init__(self, num_classes: int = 10, model: str = "vit_base_patch16_224", img_size: int = 224,
                 patch_size: int | None = None, embed_dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, pretrained_file: str | None = None):
        super().__init__()
        import timm  # lazy: importing openood_ext stays fast

        kwargs = {k: v for k, v in dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                        num_heads=num_heads).items() if v is not None}
        try:
            vit = timm.create_model(model, pretrained=False, num_classes=num_classes, img_size=img_size, **kwargs)
        except Exception as exc:  # unknown model name, bad sizes
            raise ConfigError(f"network.model: timm could not build {model!r} ({exc})".splitlines()[0]) from None
        self.fc = vit.head
        vit.head = nn.Identity()
        self.vit, self.img_size = vit, int(img_size)
        self.feature_dim = vit.num_features
        if pretrained_file:  # ImageNet weights to fine-tune from (the head is left at its init)
            load_timm_weights(self, pretrained_file, skip_head=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)


def load_timm_weights(net: TimmViT, path: str | Path, skip_head: bool = False) -> None:
    """Load a local timm state dict (``head.*`` -> ``fc.*``) or a toolkit checkpoint into ``net``
    (``skip_head``: backbone only, e.g. ImageNet weights before fine-tuning on the ID classes)."""
    p = Path(path)
    if not p.is_file():
        looks_hub = "/" in str(path) and not p.parent.exists()
        hint = (" (a hub id cannot be fetched offline: download its pytorch_model.bin and give the local path)"
                if looks_hub else "")
        raise CheckpointError(f"teacher.checkpoint: {path} is not a local file{hint}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if any(k.startswith("vit.") for k in state):
        mapped = state
    else:
        mapped = {("fc." + k[5:] if k.startswith("head.") else "vit." + k): v for k, v in state.items()}
    own = net.state_dict()
    if skip_head:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("fc.")}
        mapped.update({k: v for k, v in own.items() if k.startswith("fc.")})
    missing, unexpected = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{p}: does not fit {type(net.vit).__name__} (missing {missing[:2]}, "
                              f"unexpected {unexpected[:2]})")
    if mapped["fc.weight"].shape != own["fc.weight"].shape:
        raise CheckpointError(f"{p}: teacher head has {mapped['fc.weight'].shape[0]} classes, the benchmark "
                              f"has {own['fc.weight'].shape[0]}")
    net.load_state_dict(mapped)
