"""Network outputs shared by every postprocessor, and the one forward pass that produces them.

A split (an image list) goes through the network once; its logits, penultimate features and labels
are kept as :class:`NetOutputs` and cached on disk (``cache/``) under a key made of the checkpoint's
content hash, the image list's content hash and the preprocessing. Postprocessors that only need these
tensors never touch the network again.

Layer taps: a postprocessor that needs intermediate layers (Gram, MDSEns's fit) hands the pass a
:class:`TapConsumer` naming its :class:`Tap` s (a layer plus a reduction, e.g. mean pooling or Gram
row sums). :func:`extract_outputs` hooks every tapped layer once (:class:`TapSet`), applies each
distinct reduction once per batch inside the hook (before any later in-place op can change the
tensor) and feeds each consumer its reduced tensors batch by batch. Only what the consumers keep
(per-class statistics, per-sample scores) outlives the batch; full feature maps never do.

Graph consumers: a method that needs the input gradient of the pass's outputs (ODIN and the other
input-perturbation methods) hands the pass a :class:`GraphConsumer`; the pass then runs in micro-batches of
its ``graph_chunk`` samples with gradients on for the input, and the consumer gets each micro-batch's
input and outputs with their graph, so the scored splits need no clean pass of their own for it.

The per-split forward loop is :func:`extract_outputs` (one function, so wrapping it, e.g. to shard a
split over ranks and gather the results, is done in one place).
"""

from __future__ import annotations

import contextlib

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import DataError
from .utils.io import write_stream
from .utils.runtime import full_precision, get_logger, progress


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
    #: results of the tap consumers fed by the pass that produced these outputs (not cached on disk)
    tap_results: list = field(default_factory=list, repr=False)
    #: hook firings per tapped layer in that pass
    tap_calls: dict = field(default_factory=dict, repr=False)

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


@dataclass(frozen=True)
class Tap:
    """One reduction of one intermediate layer's output, computed inside the forward hook.

    Attributes:
        layer: a module name of the network (its output), or ``"<module>:input"`` for the module's
            first input (e.g. ``layer1:input`` is ResNet's stem output relu(bn1(conv1(x))), which no
            module returns because the ReLU is functional).
        reduce: a key naming the reduction; taps with equal (layer, reduce) are computed once per
            batch however many consumers ask for them, so equal keys must mean equal ``fn``.
        fn: ``[B, ...] tensor -> object`` (a tensor or a list of tensors) kept for the batch; it may
            run later modules of the network on the tensor (the hooks ignore those firings).
    """

    layer: str
    reduce: str
    fn: Callable[[torch.Tensor], Any] = field(compare=False, hash=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.layer, self.reduce)


class TapConsumer(Protocol):
    """Receives one split's tapped reductions batch by batch during :func:`extract_outputs`.

    ``update`` gets ``{tap.key: reduced}`` for its own taps, the batch's logits [B, C] (float32, cpu)
    and labels [B]; ``finish`` is called once after the last batch and returns the consumer's result
    (e.g. per-sample scores), which :func:`extract_outputs` returns in ``NetOutputs.tap_results``.
    """

    taps: Sequence[Tap]

    def update(self, reduced: dict[tuple[str, str], Any], logits: torch.Tensor, labels: torch.Tensor) -> None: ...

    def finish(self) -> Any: ...


class GraphConsumer(Protocol):
    """Reads each micro-batch's autograd graph during :func:`extract_outputs` (see the module docstring).

    ``update_graph(x, logits, features)`` gets the micro-batch's input x [B, C, H, W] (a leaf that requires
    grad, on the device) and ``net(x, return_feature=True)``'s logits [B, K] and features [B, D], both
    still attached to x; it runs with gradients on and the taps paused (it may run the network again).
    ``finish`` returns the consumer's result, kept in ``NetOutputs.tap_results`` like a tap consumer's.
    """

    taps: Sequence[Tap]
    graph_chunk: int

    def update_graph(self, x: torch.Tensor, logits: torch.Tensor, features: torch.Tensor) -> None: ...

    def finish(self) -> Any: ...


def split_tap_layer(layer: str) -> tuple[str, bool]:
    """(module name, whether the module's input rather than its output is tapped)."""
    if layer.endswith(":input"):
        return layer[: -len(":input")], True
    return layer, False


def _as_float32(t):
    """A detached tapped output with its half-precision floating tensors in float32 (lists element-wise)."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        return t.float() if t.is_floating_point() and t.dtype != torch.float64 else t
    if isinstance(t, (list, tuple)):
        return type(t)(_as_float32(x) for x in t)
    return t


class TapSet:
    """Forward hooks computing every distinct :class:`Tap` once per batch.

    ``calls[layer]`` counts hook firings per tapped layer (one per batch when each module runs once
    per forward pass); a module that fires twice in one batch is an error (its reduction would be
    ambiguous).
    """

    def __init__(self, net: torch.nn.Module, taps: Iterable[Tap]):
        self.net = net
        self.by_layer: dict[str, dict[str, Callable]] = {}
        for tap in taps:
            self.by_layer.setdefault(tap.layer, {}).setdefault(tap.reduce, tap.fn)
        # a torch.compile-d network: hook the modules of the network it wraps (the compiled forward runs
        # them, hooks included), so a tapped pass runs compiled too
        modules = dict(getattr(net, "_orig_mod", net).named_modules())
        missing = [layer for layer in self.by_layer if split_tap_layer(layer)[0] not in modules]
        if missing:
            raise ValueError(f"tapped layer(s) {missing} not found in {type(net).__name__}; "
                             f"modules are: {', '.join(n for n in modules if n)[:500]}")
        self._modules = modules
        self._handles: list = []
        self._batch: dict[tuple[str, str], Any] = {}
        self.calls: Counter = Counter()
        self._paused = False

    @contextlib.contextmanager
    def paused(self):
        """Hooks ignore firings inside: a consumer may run (parts of) the network again in its update."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _record(self, layer: str, t) -> None:
        if self._paused:
            return
        if isinstance(t, (tuple, list)):
            t = t[0]
        if any(k[0] == layer for k in self._batch):
            raise ValueError(f"tapped layer {layer!r} fired twice in one forward pass (a module used "
                             f"twice?); tap another module")
        self.calls[layer] += 1
        # reductions run in float32 with autocast off: under bf16/fp16 a Gram row sum or a covariance
        # would be computed (and overflow) in half precision; a reduction may run later modules of the
        # network on the map (RankFeat continues the pass from an edited map): the hooks ignore those
        with torch.no_grad(), full_precision(), self.paused():
            t = _as_float32(t)
            for reduce, fn in self.by_layer[layer].items():  # a module may return a list (VMDLS's encoder)
                self._batch[(layer, reduce)] = fn(t)

    def __enter__(self) -> TapSet:  # noqa: PYI034
        for layer in self.by_layer:
            name, on_input = split_tap_layer(layer)
            module = self._modules[name]
            if on_input:
                handle = module.register_forward_pre_hook(lambda _m, inputs, layer=layer: self._record(layer, inputs))
            else:
                handle = module.register_forward_hook(lambda _m, _i, out, layer=layer: self._record(layer, out))
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._batch = [], {}

    def pop(self) -> dict[tuple[str, str], Any]:
        """This batch's reductions, ``{(layer, reduce): result}``; checks every tap fired."""
        batch, self._batch = self._batch, {}
        absent = [layer for layer in self.by_layer if not any(k[0] == layer for k in batch)]
        if absent:
            raise ValueError(f"tapped layer(s) {absent} did not run in the forward pass")
        return batch


@torch.no_grad()
def extract_outputs(net: torch.nn.Module, loader, device: torch.device | str = "cpu",
                    desc: str = "forward", consumers: Sequence[TapConsumer | GraphConsumer] = ()) -> NetOutputs:
    """Run ``net`` once over ``loader`` in eval mode (the per-split forward loop).

    The loader yields ``(images, labels)`` or ``(images, labels, n_skipped)`` batches. The network must
    accept ``net(x, return_feature=True)`` and return ``(logits, features)``. Every consumer's taps are
    computed in this same pass (see the module docstring); ``NetOutputs.tap_results[i]`` is
    ``consumers[i].finish()``. With :class:`GraphConsumer` s among the consumers (all of one
    ``graph_chunk``) each batch runs in micro-batches of that size with gradients on for the input.
    """
    net.eval()
    graph = [c for c in consumers if getattr(c, "graph_chunk", None)]
    chunks = {c.graph_chunk for c in graph}
    if len(chunks) > 1:
        raise ValueError(f"extract_outputs: the graph consumers' micro-batch sizes differ ({sorted(chunks)})")
    chunk = chunks.pop() if chunks else None
    plain = [c for c in consumers if not getattr(c, "graph_chunk", None)]
    logits, feats, labels = [], [], []
    skipped = 0
    taps = TapSet(net, [t for c in consumers for t in c.taps])
    with taps:
        for batch in progress(loader, desc=desc):
            images, targets = batch[0], torch.as_tensor(batch[1]).long()
            skipped += int(batch[2]) if len(batch) > 2 else 0
            if len(images) == 0:
                continue
            pieces = zip(images.split(chunk), targets.split(chunk)) if chunk else [(images, targets)]
            for part, part_targets in pieces:
                if graph:
                    with torch.enable_grad():
                        x = part.to(device, non_blocking=True).detach().clone().requires_grad_(True)
                        out_graph, feat_graph = net(x, return_feature=True)
                    out, feat = out_graph.detach(), feat_graph.detach()
                else:
                    out, feat = net(part.to(device, non_blocking=True), return_feature=True)
                out = out.float().cpu()
                logits.append(out)
                feats.append(feat.float().flatten(1).cpu())
                labels.append(part_targets)
                if consumers:
                    reduced = taps.pop()
                    with taps.paused():
                        with full_precision():  # consumers' statistics (min/max, covariances) in float32
                            for c in plain:
                                c.update({t.key: reduced[t.key] for t in c.taps}, out, part_targets)
                        with torch.enable_grad():
                            for c in graph:
                                c.update_graph(x, out_graph, feat_graph)
    if not logits:
        raise EmptySplit(f"{desc}: none of the split's {skipped} images could be read", skipped)
    outputs = NetOutputs(torch.cat(logits), torch.cat(feats), torch.cat(labels), last_linear_layer(net),
                         skipped)
    with full_precision():
        outputs.tap_results = [c.finish() for c in consumers]
    outputs.tap_calls = dict(taps.calls)
    return outputs


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
        write_stream(self.path(key), lambda fh: torch.save({**outputs.to_dict(), "key": key}, fh))

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
