"""``Detector``: one OOD detector for deployment: fit, score batches, calibrate a cut-off, save, load.

::

    det = Detector("knn", net, k=50).fit(train_loader)      # or .fit_outputs(NetOutputs)
    conf = det(images)                                      # tensor [B], higher = more in-distribution
    det.threshold(id_val_loader, tpr=0.95)                  # the cut-off keeping 95 % of ID images
    is_id = det.predict(images)                             # bool tensor [B]
    det.save("knn.pt"); det = Detector.load("knn.pt", net)  # fitted statistics only, no images

Any postprocessor of the zoo, on any classifier (:mod:`openood_ext.api.model`), on the device of
``net``, in batches, with no disk cache and no run directory. Scoring is serialised by a lock, so one
detector may be shared by threads. The file holds the method's settings and fitted state (and a
fingerprint of the network's architecture), never the network's weights; it is a pickle: load only
files you trust.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..features import NetOutputs, extract_outputs, last_linear_layer
from ..postprocessors import POSTPROCESSORS
from ..postprocessors.base import as_postprocessor
from ..postprocessors.knn_search import KNNIndex
from ..postprocessors.schedule import Scheduler, route, split_result
from ..utils.io import write_with
from .model import ModelAdapter, adapt, architecture_fingerprint, is_toolkit_network, last_linear_name, probe

FORMAT = "openood_ext.Detector"
FORMAT_VERSION = 1
#: attributes of a postprocessor that are wiring, not fitted state
_WIRING = {"net", "device", "loaders"}


def _device_of(net: nn.Module) -> torch.device:
    for t in [*net.parameters(), *net.buffers()]:
        return t.device
    return torch.device("cpu")


def _pack(value: Any) -> Any:
    """Fitted state in a picklable form (a KNN index becomes its bank of vectors)."""
    if isinstance(value, KNNIndex):
        return {"__knn_index__": value.bank.detach().cpu(), "backend": value.backend, "chunk_size": value.chunk_size,
                "memory_mb": value.memory_mb}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _pack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_pack(v) for v in value)
    return value


def _unpack(value: Any) -> Any:
    if isinstance(value, dict) and "__knn_index__" in value:
        return KNNIndex(value["__knn_index__"], backend=value["backend"], chunk_size=value["chunk_size"],
                        memory_mb=value.get("memory_mb", 1024.0))
    if isinstance(value, dict):
        return {k: _unpack(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unpack(v) for v in value)
    return value


class _FitSource:
    """The scheduler's source over a training loader (and an optional ID validation loader)."""

    def __init__(self, net, device, train_loader, val_loader=None):
        self.net, self.device = net, device
        self.loaders = {"id_train": train_loader, "id_val": val_loader if val_loader is not None else train_loader}
        self.memo: dict[str, NetOutputs] = {}

    def outputs(self, split: str, consumers=()) -> NetOutputs:
        if split == "id_val" and self.loaders["id_val"] is self.loaders["id_train"] and not consumers:
            split = "id_train"
        if consumers or split not in self.memo:
            self.memo[split] = extract_outputs(self.net, self.loaders[split], self.device, desc=f"fit {split}",
                                               consumers=consumers)
        return self.memo[split]

    def loader_for(self, split: str):
        return self.loaders[split]

    def example(self, split: str) -> torch.Tensor:
        for batch in self.loaders[split]:
            if len(batch[0]):
                return batch[0][:2].to(self.device)
        raise ConfigError("Detector.fit: the loader yielded no images")


class Detector:
    """A fitted OOD detector around one postprocessor (see the module docstring).

    Args:
        method: a postprocessor name (``"knn"``) or a build spec ``{"name": ..., **arguments}``.
        net: the classifier (any ``nn.Module`` mapping images to logits); scoring runs on its device.
        feature_layer, output_key: see :class:`~openood_ext.api.model.ModelAdapter`.
        batch_size: images per forward pass when scoring a larger batch.
        **kwargs: the postprocessor's arguments (``k=50``).
    """

    def __init__(self, method: str | Mapping[str, Any], net: nn.Module, *, feature_layer: str | None = None,
                 output_key: str | int | None = None, batch_size: int = 256, **kwargs):
        spec = {"name": method, **kwargs} if isinstance(method, str) else {**dict(method), **kwargs}
        self.spec = spec
        self.pp = as_postprocessor(POSTPROCESSORS.build(spec))
        self.net: ModelAdapter = adapt(net, feature_layer, output_key)
        self.device = _device_of(self.net)
        self.route = route(self.pp)
        self.batch_size = int(batch_size)
        self.cutoff: float | None = None
        self.tpr: float | None = None
        self.num_classes: int | None = None
        self.fitted = False
        self._extras: dict[str, torch.Tensor] | None = None
        self._lock = threading.RLock()

    @property
    def name(self) -> str:
        return self.pp.name

    # ------------------------------------------------------------------ fitting
    def fit(self, loader, val_loader=None) -> "Detector":
        """Fit on ID training images: ``loader`` yields ``(images, labels)`` (or ``(images, labels, n)``)
        batches; ``val_loader`` (ID validation) for the methods that tune on it (default: ``loader``)."""
        with self._lock:
            self.net.eval()
            source = _FitSource(self.net, self.device, loader, val_loader)
            sched = Scheduler({"pp": self.pp}, source, self.net, self.device)
            sched.prepare([])
            sched.score("pp")  # fits the methods not fitted by the tap pass; no split to score
            self.num_classes = int(source.memo["id_train"].logits.shape[1])
            self.fitted = True
        return self

    def fit_outputs(self, train_outputs: NetOutputs, val_outputs: NetOutputs | None = None) -> "Detector":
        """Fit from precomputed outputs (methods that need only logits and features)."""
        if self.route != "outputs":
            raise ConfigError(f"Detector('{self.name}').fit_outputs: this method reads the network's layers or "
                              f"gradients; fit it from images with fit(loader)")
        extras = self._fc_extras()
        for out in (train_outputs, val_outputs):
            if out is not None:
                for k, v in extras.items():
                    out.extras.setdefault(k, v)
        with self._lock:
            self.pp.fit(train_outputs, val_outputs=val_outputs)
            self.num_classes = int(train_outputs.logits.shape[1])
            self.fitted = True
        return self

    def _fc_extras(self) -> dict[str, torch.Tensor]:
        if self._extras is None:
            self._extras = last_linear_layer(self.net) if self.net.has_linear_classifier else {}
        return self._extras

    # ------------------------------------------------------------------ scoring
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Confidence per image, float32 tensor [B] on the images' device, higher = more in-distribution."""
        if not self.fitted:
            raise RuntimeError(f"Detector('{self.name}'): call fit(loader) or load a fitted detector first")
        if images.ndim < 2 or len(images) == 0:
            return torch.zeros(0, device=images.device)
        parts = [self._score_batch(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return torch.from_numpy(np.concatenate(parts)).float().to(images.device)

    def score_loader(self, loader) -> torch.Tensor:
        """Confidences of every image of a loader yielding ``(images, ...)`` batches, float32 [N] on cpu."""
        parts = [self(batch[0] if isinstance(batch, (tuple, list)) else batch).cpu() for batch in loader]
        return torch.cat(parts) if parts else torch.zeros(0)

    def _score_batch(self, images: torch.Tensor) -> np.ndarray:
        with self._lock:
            self.net.eval()
            x = images.to(self.device)
            dummy = [(x, torch.zeros(len(x), dtype=torch.long), 0)]
            if self.route == "outputs":
                with torch.no_grad():
                    logits, feat = self.net(x, return_feature=True)
                out = NetOutputs(logits.float().cpu(), feat.float().flatten(1).cpu(), None, self._fc_extras())
                result = self.pp.score(out)
            elif self.route == "network":
                result = self.pp.score_loader(dummy)
            else:
                result = extract_outputs(self.net, dummy, self.device, desc="detector",
                                         consumers=[self.pp.score_taps()]).tap_results[0]
            return np.asarray(split_result(result)[0], dtype=np.float64)

    # ------------------------------------------------------------------ calibration
    def threshold(self, id_loader, tpr: float = 0.95) -> float:
        """The cut-off keeping the fraction ``tpr`` of the loader's (ID) images: the largest value such that
        at least ``tpr`` of their confidences are >= it. Stored, used by :meth:`predict`, saved."""
        if not 0 < tpr <= 1:
            raise ConfigError(f"Detector.threshold: tpr must be in (0, 1], got {tpr}")
        conf = np.sort(self.score_loader(id_loader).double().numpy())
        if len(conf) == 0:
            raise ConfigError("Detector.threshold: the loader yielded no images")
        keep = int(np.ceil(tpr * len(conf) - 1e-9))  # images that must stay at or above the cut-off
        self.cutoff, self.tpr = float(conf[len(conf) - keep]), float(tpr)
        return self.cutoff

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """True where an image is taken as in-distribution (confidence >= the calibrated cut-off)."""
        if self.cutoff is None:
            raise RuntimeError(f"Detector('{self.name}').predict: call threshold(id_val_loader) first")
        return self(images) >= self.cutoff

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the method's settings, fitted statistics, cut-off and the network's fingerprint (no weights)."""
        if not self.fitted:
            raise RuntimeError(f"Detector('{self.name}').save: fit it first")
        state = {k: _pack(v) for k, v in vars(self.pp).items() if k not in _WIRING}
        blob = {"format": FORMAT, "version": FORMAT_VERSION, "spec": self.spec, "state": state,
                "route": self.route, "architecture": architecture_fingerprint(self.net),
                "network": self.net.name, "num_classes": self.num_classes, "cutoff": self.cutoff, "tpr": self.tpr,
                "feature_layer": None if self.net.native else self.net.feature_layer, "output_key": self.net.output_key,
                "on_output": getattr(self.net, "on_output", False)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda tmp: torch.save(blob, tmp))
        return path

    @classmethod
    def load(cls, path: str | Path, net: nn.Module, **kwargs) -> "Detector":
        """A detector saved by :meth:`save`, on ``net`` (which must have the architecture and output size it
        was fitted on)."""
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise ConfigError(f"Detector.load: {path} not found") from None
        except Exception as exc:
            raise ConfigError(f"Detector.load: {path} is not a saved detector ({type(exc).__name__})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ConfigError(f"Detector.load: {path} is not a saved detector")
        if blob.get("version") != FORMAT_VERSION:
            raise ConfigError(f"Detector.load: {path} was written in detector format version {blob.get('version')}, "
                              f"this openood_ext reads version {FORMAT_VERSION}; fit and save it again")
        inner = net.inner if isinstance(net, ModelAdapter) else net
        if is_toolkit_network(inner):
            fc = inner.get_fc_layer()
        else:
            last = last_linear_name(inner)
            fc = dict(inner.named_modules())[last] if last else None
        outputs = getattr(fc, "out_features", None)
        if isinstance(outputs, int) and blob.get("num_classes") is not None and outputs != blob["num_classes"]:
            raise ConfigError(f"Detector.load: {path} was fitted on a network with {blob['num_classes']} outputs; "
                              f"this {type(inner).__name__} has {outputs}")
        if architecture_fingerprint(inner) != blob["architecture"]:
            raise ConfigError(f"Detector.load: {path} was fitted on another architecture ({blob['network']}) than "
                              f"this {type(inner).__name__}")
        layer = blob.get("feature_layer")
        if layer and blob.get("on_output"):
            layer = f"{layer}:output"
        det = cls(blob["spec"], net, feature_layer=kwargs.pop("feature_layer", layer),
                  output_key=kwargs.pop("output_key", blob.get("output_key")), **kwargs)
        vars(det.pp).update({k: _unpack(v) for k, v in blob["state"].items()})
        if det.route != "outputs":
            det.pp.attach_network(det.net, det.device, None)
        det.num_classes, det.cutoff, det.tpr, det.fitted = blob["num_classes"], blob["cutoff"], blob["tpr"], True
        return det

    def check(self, example: torch.Tensor) -> int:
        """Run one batch through the network: its number of classes (one line when it is not the fitted one)."""
        return probe(self.net, example.to(self.device), self.num_classes, f"the detector (fitted on)")
