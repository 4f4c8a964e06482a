"""GrOOD: gradient-aware OOD detection (ElAraby et al., "GROOD: Gradient-Aware Out-of-Distribution
Detection", arXiv 2312.14427 / TMLR 2025), as OpenOOD v1.5's ``grood``.

Class prototypes ``p_1..p_C`` are the mean penultimate features of the ID training samples per class;
an OOD prototype ``p_o`` stands for "not ID". A sample with penultimate feature ``h`` gets nearest-
prototype logits ``s_j = -||h - p_j||`` over the C + 1 prototypes, and its representation is the
gradient of the cross-entropy ``CE(s, yhat)`` (``yhat`` its predicted class) with respect to ``p_o``.
That gradient has a closed form, the same for every ID class ``yhat``::

    g(h) = softmax(s)_o * (h - p_o) / ||h - p_o||            (a vector of the feature dimension)

so GrOOD needs no backward pass. The score is minus the distance from ``g(h)`` to its k-th nearest gradient
of the correctly classified ID training samples.

Where the OOD prototype comes from (``ood_prototype``):

* ``synthetic`` (default; the paper "derives an OOD prototype from synthetic samples" made by a mix-up
  at an early intermediate layer; the mix itself as OpenOOD's ``use_synthetic`` code does it): the mean
  penultimate feature of ``n_noise_samples`` ID training images whose activation at an early layer
  (``mix_layer``) is interpolated towards the mean activation of their second most likely class,
  ``lam * a(x) + (1 - lam) * a_bar[c2(x)]``. The class means ``a_bar`` are taken on the id_train shared
  pass (layer taps), the mixed images cost one forward pass over those few images, and every split is
  scored from the classifier's input tapped on its shared pass;
* ``ood_val`` (OpenOOD v1.5's configuration, ``use_val_ood: True``): the mean penultimate feature of
  ``n_noise_samples`` samples of the benchmark's ``ood_val`` split, read from its cached outputs (the
  scheduler hands them to ``fit``);
* ``class_mean`` (OpenOOD's ``use_proto_mean``): the mean of the class prototypes.
The last two score from the cached outputs alone.

Departures of OpenOOD's code, and the switches that reproduce it:

* OpenOOD's configuration builds the OOD prototype from the OOD validation set (``ood_prototype: ood_val``).
* OpenOOD searches an approximate faiss IVF index (``nlist = 4 sqrt(0.8 batches)``, ``nprobe = 4``), which
  can miss the nearest gradient, and leaves the batch on which it trains that index out of it; ours is an
  exact search over every correctly classified training sample (no switch).
* OpenOOD reads its OOD images batch by batch and stops after the batch that reaches ``n_noise_samples``
  (with its batch size 200 and the default 100: the first 200); ours takes exactly ``n_noise_samples``:
  pass a multiple of the batch size to match it.
* OpenOOD's subsets (``sampling_ratio`` of the ID training samples, the ``n_noise_samples`` images) are the
  first loader batches of unshuffled image lists, which are often sorted by class or source (``digits``: a
  ratio of 0.5 keeps 3 of its 6 classes). Ours are seeded random draws (``seed``); ``subset: first`` takes
  the first samples as OpenOOD.
* OpenOOD's synthetic prototype mixes with a fixed 0.5 whatever its ``lam`` says; ours uses ``lam``
  (default 0.5, the value that code runs with).
* OpenOOD ignores ``k`` (it always takes the nearest gradient); ours uses the k-th (default 1).
* OpenOOD's score is minus the *squared* distance (faiss's L2); ours minus the distance: the same ranking.
"""

from __future__ import annotations

import inspect
import math
from typing import Annotated, Literal

import numpy as np
import torch

from ..errors import DataError
from ..features import NetOutputs, Tap, extract_outputs, split_tap_layer
from ..schema import NonNegativeInt, PositiveFloat, PositiveInt, Range
from .base import Postprocessor, as_numpy
from .common import check_fitted
from .knn_search import KNNIndex
from .layer_features import first_batch, iter_images, resolve_layers
from .registry import POSTPROCESSORS


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature per class, float64 [C, D]; a class without samples keeps a zero prototype (as OpenOOD)."""
    x, labels = features.double(), labels.long()
    sums = torch.zeros(num_classes, x.shape[1], dtype=torch.float64).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).double()
    return sums / counts[:, None]


def ood_prototype_gradient(features: torch.Tensor, prototypes: torch.Tensor, ood: torch.Tensor,
                           eps: float = 1e-12) -> torch.Tensor:
    """d CE(s, yhat) / d p_o for each row h of ``features`` [N, D], float64 [N, D].

    ``s = -(||h - p_1||, .., ||h - p_C||, ||h - p_o||)`` with ``prototypes`` [C, D] and the OOD prototype
    ``ood`` [D]; for any ID class yhat the gradient is ``softmax(s)_o (h - p_o) / ||h - p_o||`` (the unit
    vector taken with ``eps``, as ``torch.nn.functional.normalize``).
    """
    h = features.double()
    every = torch.cat([prototypes.double(), ood.double()[None]])  # [C + 1, D]
    s = -torch.cdist(h, every)  # [N, C + 1]
    p_ood = s.softmax(dim=1)[:, -1:]
    away = h - ood.double()
    return p_ood * away / away.norm(dim=1, keepdim=True).clamp_min(eps)


@POSTPROCESSORS.register("grood")
class GrOODPostprocessor(Postprocessor):
    """GrOOD: conf = -||g(h) - g_k||, minus the distance from the OOD-prototype gradient of a sample to the
    k-th nearest one of the correctly classified ID training samples; higher = more ID (module docstring).

    Args:
        ood_prototype: ``synthetic`` (mixed ID training images, the paper's), ``ood_val`` (the mean of
            ``n_noise_samples`` OOD validation features, OpenOOD's configuration; needs the benchmark's
            ``ood_val`` split) or ``class_mean`` (the mean of the class prototypes); module docstring.
        n_noise_samples: samples averaged into the OOD prototype, OOD validation or mixed ID training ones
            (OpenOOD default 100; all of them when the split is smaller).
        mix_layer: ``synthetic``: the layer whose output is mixed, a stage index or module name
            (``layer_features.resolve_layers``); 2 is OpenOOD's ``pre_layer_indx: 3`` (its
            ``feature_list[3]``: ResNet-18's ``layer3``).
            Its class means hold C activations of that layer (float64 during the id_train pass).
        lam: ``synthetic``: weight of the image's own activation in the mix, in (0, 1).
        k: neighbour rank in gradient space (default 1, the paper's nearest neighbour).
        sampling_ratio: share of the ID training samples that build the class prototypes and the gradient
            bank, in (0, 1] (OpenOOD default 1); the synthetic prototype's layer means take every sample.
        subset: how the ``sampling_ratio`` and ``n_noise_samples`` subsets are drawn: ``random`` (seeded,
            ``seed``) or ``first`` (the first samples in loader order, OpenOOD's first batches).
        seed: seed of the random subsets.
        prediction: the class a sample is predicted as (ID accuracy): ``nearest_prototype`` (the class
            prototype nearest its feature, what the paper reports and OpenOOD's GrOOD returns) or ``logits``
            (the network's argmax, as the other postprocessors).
        backend, memory_mb: the exact nearest-neighbour search (:class:`~.knn_search.KNNIndex`).
    """

    def __init__(self, ood_prototype: Literal["synthetic", "ood_val", "class_mean"] = "synthetic",
                 n_noise_samples: PositiveInt = 100, k: PositiveInt = 1, mix_layer: int | str = 2,
                 lam: Annotated[float, Range(0, 1, open_low=True, open_high=True)] = 0.5,
                 sampling_ratio: Annotated[float, Range(0, 1, open_low=True)] = 1.0,
                 subset: Literal["random", "first"] = "random", seed: NonNegativeInt = 0,
                 prediction: Literal["nearest_prototype", "logits"] = "nearest_prototype",
                 backend: Literal["auto", "faiss", "torch"] = "auto", memory_mb: PositiveFloat = 1024.0):
        self.ood_prototype, self.n_noise_samples = ood_prototype, int(n_noise_samples)
        self.k, self.sampling_ratio = int(k), float(sampling_ratio)
        self.subset, self.seed = subset, int(seed)
        self.mix_layer, self.lam = mix_layer, float(lam)
        self.prediction, self.backend, self.memory_mb = prediction, backend, float(memory_mb)
        self._prototypes = self._ood = self._index = None
        self._mix_module = self._fc_input = self._layer_means = self._train = None
        self._mixed: dict = {}  # (n_noise_samples, subset, seed) -> synthetic features, shared by APS's points

    @property
    def uses_taps(self) -> bool:
        """The synthetic OOD prototype reads ``mix_layer`` on the id_train shared pass (then every split
        is scored from the classifier's input tapped on its pass; the other sources score cached outputs)."""
        return self.ood_prototype == "synthetic"

    @property
    def fit_splits(self) -> tuple[str, ...]:
        """Splits besides the ID ones whose cached outputs ``fit`` reads (the scheduler passes them as
        ``split_outputs``)."""
        return ("ood_val",) if self.ood_prototype == "ood_val" else ()

    def fit(self, train_outputs: NetOutputs | None = None, split_outputs: dict | None = None, **_):
        if train_outputs is None or train_outputs.labels is None:
            raise ValueError("grood needs labelled ID training outputs to fit")
        self._train = train_outputs
        keep = self.draw(len(train_outputs), max(1, math.ceil(self.sampling_ratio * len(train_outputs))))
        feats, labels, logits = (train_outputs.features[keep], train_outputs.labels[keep],
                                 train_outputs.logits[keep])
        self._prototypes = class_prototypes(feats, labels, logits.shape[1])
        if self.uses_taps and self._layer_means is None:  # not fitted from the shared pass: a pass of its own
            if getattr(self, "net", None) is None or getattr(self, "loaders", None) is None:
                raise RuntimeError("grood: ood_prototype: synthetic fits from the shared forward pass (fit_taps), "
                                   "or attach_network(net, device, loaders) first")
            loader = self.loaders("id_train")
            extract_outputs(self.net, loader, self.device, desc="grood fit",
                            consumers=[self.fit_taps(self.net, first_batch(loader).to(self.device))])
        self._ood = self.fit_ood_prototype(split_outputs or {})
        correct = logits.argmax(dim=1) == labels  # the bank holds correctly classified samples only
        if not bool(correct.any()):
            raise DataError("grood: no ID training sample is classified correctly; the gradient bank is empty")
        bank = ood_prototype_gradient(feats[correct], self._prototypes, self._ood).float()
        self._index = KNNIndex(bank, backend=self.backend, memory_mb=self.memory_mb)
        return self

    def fit_ood_prototype(self, split_outputs: dict) -> torch.Tensor:
        """The OOD prototype p_o, float64 [D] (see ``ood_prototype``)."""
        if self.ood_prototype == "class_mean":
            return self._prototypes.mean(dim=0)
        if self.ood_prototype == "synthetic":
            key = (self.n_noise_samples, self.subset, self.seed)
            if key not in self._mixed:
                self._mixed[key] = self.synthetic_features()
            return self._mixed[key].double().mean(dim=0)
        ood_val = split_outputs.get("ood_val")
        if ood_val is None or len(ood_val) == 0:
            raise DataError("grood: ood_prototype: ood_val needs the benchmark's ood_val split (OOD validation "
                            "images); use ood_prototype: class_mean on a benchmark without one")
        keep = self.draw(len(ood_val), min(self.n_noise_samples, len(ood_val)))
        return ood_val.features[keep].double().mean(dim=0)

    def draw(self, n: int, m: int) -> torch.Tensor:
        """Indices of the m of n samples a subset keeps (``subset``), in increasing order."""
        if self.subset == "first" or m >= n:
            return torch.arange(m)
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:m].sort().values

    # ------------------------------------------------------------------ synthetic OOD prototype
    def fit_taps(self, net: torch.nn.Module, example: torch.Tensor):
        """``synthetic``: a consumer taking the per-class mean of ``mix_layer``'s output on the id_train
        pass (all of its samples); None for the other sources."""
        if not self.uses_taps:
            return None
        self._mix_module = resolve_layers(net, [self.mix_layer], example)[0]
        self._fc_input = f"{fc_module_name(net)}:input"
        return _LayerClassMeans(self)

    def score_taps(self):
        """``synthetic``: a consumer scoring a split from the classifier's input on its pass."""
        check_fitted(self._index, "grood")
        return _TappedScore(self)

    def score_loader(self, loader) -> np.ndarray:
        return self.score(extract_outputs(self.net, loader, self.device, desc="grood"))

    @property
    def grid_params(self) -> tuple[str, ...]:
        """``synthetic``: APS scores these jointly (:meth:`aps_scores`); the other sources refit per point from
        cached outputs, which costs no pass."""
        return ("k", "n_noise_samples", "sampling_ratio") if self.uses_taps else ()

    def aps_scores(self, combos: list[dict], loaders: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ID-val, OOD-val) confidences per grid point after ``fit``: one pass per validation split and the
        fitted class means of the mixing layer serve every point; each point refits its prototypes, bank and
        OOD prototype (mixed images once per ``n_noise_samples``)."""
        check_fitted(self._index, "grood")
        val = [extract_outputs(self.net, loaders[s], self.device, desc=f"grood {s}").features
               for s in ("id_val", "ood_val")]
        results = []
        for combo in combos:
            settings = {a: getattr(self, a) for a in inspect.signature(type(self)).parameters}
            point = type(self)(**{**settings, **combo})
            point.net, point.device, point.loaders = self.net, self.device, self.loaders
            point._mix_module, point._fc_input, point._layer_means = self._mix_module, self._fc_input, self._layer_means
            point._mixed = self._mixed
            point.fit(self._train)
            results.append(tuple(point.confidence(v) for v in val))
        return results

    @torch.no_grad()
    def synthetic_features(self) -> torch.Tensor:
        """Penultimate features [n, D] of ``n_noise_samples`` ID training images whose ``mix_layer`` output
        a is replaced by ``lam * a + (1 - lam) * a_bar[c2]``, c2 the image's second most likely class."""
        loader = self.loaders("id_train")
        n = len(loader.dataset)
        subset = rows_of(loader, self.draw(n, min(self.n_noise_samples, n)))
        name, on_input = split_tap_layer(self._mix_module)
        module = dict(self.net.named_modules())[name]
        means = self._layer_means.to(self.device)
        feats = []
        for images, _ in iter_images(subset, self.device, desc="grood synthetic"):
            second = self.net(images).topk(2, dim=1).indices[:, 1]
            towards = (1 - self.lam) * means[second]

            def mixed(a):
                return self.lam * a + towards.to(a.dtype)

            handle = (module.register_forward_pre_hook(lambda _m, inputs: (mixed(inputs[0]), *inputs[1:]))
                      if on_input else module.register_forward_hook(lambda _m, _i, out: mixed(out)))
            try:
                _, feat = self.net(images, return_feature=True)
            finally:
                handle.remove()
            feats.append(feat.float().flatten(1).cpu())
        if not feats:
            raise DataError("grood: no ID training image could be read for the synthetic OOD prototype")
        return torch.cat(feats)

    def score(self, outputs: NetOutputs) -> np.ndarray:
        return self.confidence(outputs.features)

    def predict(self, outputs: NetOutputs) -> np.ndarray:
        """Predicted class per sample, int64 [N] (``prediction``)."""
        if self.prediction == "logits":
            return super().predict(outputs)
        check_fitted(self._prototypes, "grood")
        return torch.cdist(outputs.features.double(), self._prototypes).argmin(dim=1).numpy()

    def confidence(self, features: torch.Tensor) -> np.ndarray:
        """conf per sample from penultimate features [N, D], float64 [N]."""
        check_fitted(self._index, "grood")
        grads = ood_prototype_gradient(features, self._prototypes, self._ood).float()
        # k beyond the bank's size is clamped to it by the index: the farthest bank gradient
        return as_numpy(-self._index.search(grads, self.k)[:, -1])


def fc_module_name(net: torch.nn.Module) -> str:
    """The module name of the classifier's last linear layer (``get_fc_layer()``)."""
    getter = getattr(net, "get_fc_layer", None)
    fc = getter() if callable(getter) else None
    for name, module in net.named_modules():
        if fc is not None and module is fc:
            return name
    raise ValueError(f"grood: ood_prototype: synthetic needs a classifier exposing get_fc_layer(); "
                     f"{type(net).__name__} does not")


def _clone(t: torch.Tensor) -> torch.Tensor:
    return t.clone()  # a later in-place activation would change the tapped tensor before the update


class _LayerClassMeans:
    """Per-class sums of ``mix_layer``'s output over the id_train pass -> ``pp._layer_means`` [C, ...]."""

    def __init__(self, pp: GrOODPostprocessor):
        self.pp, self.taps = pp, [Tap(pp._mix_module, "clone", _clone)]
        self.sums = self.counts = None

    def update(self, reduced, logits, labels) -> None:
        maps = reduced[self.taps[0].key].double()  # summed where the pass runs (no per-batch copy to the host)
        labels = labels.long().to(maps.device)
        keep = labels >= 0
        if self.sums is None:
            self.sums = torch.zeros(logits.shape[1], *maps.shape[1:], dtype=torch.float64, device=maps.device)
            self.counts = torch.zeros(logits.shape[1], dtype=torch.float64, device=maps.device)
        self.sums.index_add_(0, labels[keep], maps[keep])
        self.counts += torch.bincount(labels[keep], minlength=logits.shape[1]).double()

    def finish(self) -> None:
        shape = (-1, *([1] * (self.sums.ndim - 1)))
        self.pp._layer_means = (self.sums / self.counts.clamp_min(1).view(shape)).float()


class _TappedScore:
    """A split's confidences from the classifier's input, tapped on the split's pass."""

    def __init__(self, pp: GrOODPostprocessor):
        self.pp, self.taps, self.parts = pp, [Tap(pp._fc_input, "identity", _identity)], []

    def update(self, reduced, logits, labels) -> None:
        self.parts.append(reduced[self.taps[0].key].float().flatten(1).cpu())

    def finish(self) -> np.ndarray:
        return self.pp.confidence(torch.cat(self.parts))


def _identity(t):
    return t


def rows_of(loader, keep: torch.Tensor):
    """The batches of rows ``keep`` (increasing list positions) of an unshuffled evaluation loader. A
    DataLoader over an indexable dataset (possibly behind the scheduler's recording wrapper) reads only
    those rows; any other loader (decoded-cache batches, replayed batches) is streamed and the rows picked
    out of its batches."""
    inner = getattr(loader, "inner", loader)
    if isinstance(inner, torch.utils.data.DataLoader):
        return torch.utils.data.DataLoader(torch.utils.data.Subset(inner.dataset, keep.tolist()),
                                           batch_size=inner.batch_size or 64, shuffle=False,
                                           collate_fn=inner.collate_fn)
    wanted, picked, start = keep.tolist(), [], 0
    for batch in loader:
        images, labels = batch[0], torch.as_tensor(batch[1])
        rows = []
        while wanted and wanted[0] < start + len(images):
            rows.append(wanted.pop(0) - start)
        start += len(images)
        if rows:
            picked.append((images[rows], labels[rows]))
        if not wanted:
            break
    return picked
