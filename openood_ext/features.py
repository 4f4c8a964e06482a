"""Network outputs shared by every postprocessor, and the one forward pass that produces them.

A split (an image list) goes through the network once; its logits, penultimate features and labels
are kept as :class:`NetOutputs` and cached on disk (``cache/``) under a key made of the checkpoint's
content hash, the image list's content hash and the preprocessing. Postprocessors that only need these
tensors never touch the network again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import DataError
from .utils.io import write_with
from .utils.runtime import get_logger, progress


@dataclass
class NetOutputs:
    """Outputs of one forward pass over a split.

    Attributes:
        logits: float32 tensor [N, C].
        features: float32 tensor [N, D], the penultimate-layer features (input of the last linear layer).
        labels: int64 tensor [N] of class indices (ID), -1 for OOD samples, or None when unknown.
        extras: further named tensors a postprocessor declared it needs, e.g. ``fc_weight`` [C, D]
            and ``fc_bias`` [C] (one copy, not per sample).
        skipped: number of unreadable images dropped while extracting (``on_bad_image: skip``).
    """

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: int = 0

    def __post_init__(self):
        if self.logits.ndim != 2 or self.features.ndim != 2:
            raise ValueError(f"NetOutputs: logits must be [N, C] and features [N, D], got "
                             f"{tuple(self.logits.shape)} and {tuple(self.features.shape)}")
        if len(self.logits) != len(self.features):
            raise ValueError(f"NetOutputs: {len(self.logits)} logits but {len(self.features)} features")
        if self.labels is not None and len(self.labels) != len(self.logits):
            raise ValueError(f"NetOutputs: {len(self.labels)} labels for {len(self.logits)} samples")

    def __len__(self) -> int:
        return len(self.logits)

    @property
    def preds(self) -> torch.Tensor:
        """Predicted class per sample, argmax of the logits, int64 [N]."""
        return self.logits.argmax(dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {"logits": self.logits, "features": self.features, "labels": self.labels,
                "extras": self.extras, "skipped": self.skipped}


def last_linear_layer(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``fc_weight`` [C, D] and ``fc_bias`` [C] of a network exposing ``get_fc_layer()``, else {}."""
    getter = getattr(net, "get_fc_layer", None)
    if getter is None:
        return {}
    fc = getter()
    out = {"fc_weight": fc.weight.detach().float().cpu().clone()}
    out["fc_bias"] = (fc.bias.detach().float().cpu().clone() if fc.bias is not None
                      else torch.zeros(fc.weight.shape[0]))
    return out


@torch.no_grad()
def extract_outputs(net: torch.nn.Module, loader, device: torch.device | str = "cpu",
                    desc: str = "forward") -> NetOutputs:
    """Run ``net`` once over ``loader`` in eval mode.

    The loader yields ``(images, labels)`` or ``(images, labels, n_skipped)`` batches. The network must
    accept ``net(x, return_feature=True)`` and return ``(logits, features)``.
    """
    net.eval()
    logits, feats, labels = [], [], []
    skipped = 0
    for batch in progress(loader, desc=desc):
        images, targets = batch[0], batch[1]
        skipped += int(batch[2]) if len(batch) > 2 else 0
        if len(images) == 0:
            continue
        out, feat = net(images.to(device, non_blocking=True), return_feature=True)
        logits.append(out.float().cpu())
        feats.append(feat.float().flatten(1).cpu())
        labels.append(torch.as_tensor(targets).long())
    if not logits:
        raise EmptySplit(f"{desc}: none of the split's {skipped} images could be read", skipped)
    return NetOutputs(torch.cat(logits), torch.cat(feats), torch.cat(labels), last_linear_layer(net),
                      skipped)


class EmptySplit(DataError):
    """A split of which no image could be read (all skipped under ``on_bad_image: skip``)."""

    def __init__(self, message: str, skipped: int = 0):
        super().__init__(message)
        self.skipped = skipped


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(**parts: Any) -> str:
    """Stable short hash of JSON-serialisable key parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class FeatureCache:
    """Directory of cached :class:`NetOutputs`, one ``<key>.pt`` file per split.

    Entries are written atomically. An entry that fails to load or does not hold the expected
    fields is treated as a miss (and overwritten by the caller's recomputation).
    """

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def load(self, key: str, expected_samples: int | None = None) -> NetOutputs | None:
        """The cached entry, or None when absent, unreadable (truncated) or stale."""
        if self.root is None or not self.path(key).exists():
            return None
        try:
            blob = torch.load(self.path(key), map_location="cpu", weights_only=True)
            outputs = NetOutputs(blob["logits"], blob["features"], blob["labels"], blob["extras"],
                                 int(blob.get("skipped", 0)))
            if blob.get("key") != key:
                raise ValueError("entry was written for another key")
        except Exception as exc:  # truncated, foreign or old-format file: recompute
            get_logger().warning("cache entry %s is unreadable (%s); recomputing",
                                 self.path(key), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        if expected_samples is not None and len(outputs) + outputs.skipped != expected_samples:
            get_logger().warning("cache entry %s holds %d samples, its image list %d; recomputing",
                                 self.path(key), len(outputs) + outputs.skipped, expected_samples)
            return None
        return outputs

    def save(self, key: str, outputs: NetOutputs) -> None:
        if self.root is None:
            return
        write_with(self.path(key), lambda tmp: torch.save({**outputs.to_dict(), "key": key}, tmp))

    def get_or_compute(self, key: str, compute, expected_samples: int | None = None) -> NetOutputs:
        """Load ``key`` or run ``compute()`` (and store its result)."""
        outputs = self.load(key, expected_samples)
        if outputs is not None:
            self.hits += 1
            return outputs
        self.misses += 1
        outputs = compute()
        self.save(key, outputs)
        return outputs
