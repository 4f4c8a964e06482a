"""NPOS: non-parametric outlier synthesis by k-NN rejection sampling in an embedding space
(Tao, Du, Zhu & Li, ICLR 2023, "Non-Parametric Outlier Synthesis"; code ``deeplearning-wisc/npos``,
``training_from_scratch/KNN.py``).

Three standalone pieces, usable on any embedding tensor (OAML reuses them on text embeddings):

* :class:`ClassQueues` -- class-wise FIFO queues of raw (unnormalised) embeddings, with ``state_dict``;
* :func:`npos_sample` -- the vectorised sampler on a [C, Q, D] stack of full queues;
* :class:`NPOSSynthesizer` -- the OUTLIER_SOURCES entry ``npos`` (``kind = "features"``) tying both to a
  training run: its trainer pushes embeddings with :meth:`~NPOSSynthesizer.update` and asks for outliers
  with :meth:`~NPOSSynthesizer.synthesize`.

The algorithm, per class c with queue X_c [Q, D] (raw), K, ``select``, ``pick``, ``candidates``, ``keep``,
sigma:

1. U = X_c / ||X_c||; d_K(u) = squared Euclidean distance from u to its K-th nearest row of U. The
   queries are the queue rows themselves, so **each point's own row counts as its first neighbour** (at
   distance 0), as with faiss in the published code; K-th neighbour = K-1 others.
2. boundary = the ``select`` rows with the **largest** d_K; ``pick`` of them are drawn at random.
3. candidates of boundary point b (taken **raw**): b + sigma * G, G [candidates, D] ~ N(0, I), one G
   shared by all classes and boundary points of a call (as published).
4. rejection: each candidate is normalised and scored by its K-th-NN squared distance to U; for **each
   boundary point**, the ``keep`` candidates with the largest score are kept and returned **raw**.

Deviation from the published code (``ranking: intended``, the default): the published step 4 reshapes
the [pick * candidates] scores with ``view(candidates, -1)`` although they are stored block by block
(boundary point after boundary point), so whenever ``pick > 1`` the score it ranks for candidate r of
boundary point i belongs to another candidate (flat index r * pick + i instead of i * candidates + r);
OpenOOD and Dream-OOD copy it. The intended ranking here keeps exactly the top-``keep`` of each boundary
point's own candidates. ``ranking: published`` reproduces the published mixing for comparison.

Other choices: the queue persists across epochs. The published CIFAR code (and OpenOOD's copy)
re-zeroes it every epoch but not its fill counter, so the first steps of every later epoch sample around
zero rows, whose normalised k-NN queries are NaN (0/0); this published defect is not reproduced (its CLIP
variant keeps the queue too);
each class's queue turns FIFO as soon as it is full (published: classes that are full drop new samples
until every class is full).

Backends: ``faiss`` (``IndexFlatL2`` per class; with faiss-gpu and CUDA queues on the queues' GPU, its
resources and the per-class GPU indexes created once per process and reused) or ``torch`` (one batched matmul + top-k over all classes,
chunked over classes to bound memory). ``auto`` = torch for CUDA queues (the search stays on the device:
no copy of the queues to the host per step), faiss for CPU queues when installed, torch otherwise. Both
rank the same squared distances; the kept sets agree up to float32 ties.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, fields
from typing import Annotated, Literal, get_args, get_type_hints

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from ..schema import NonNegativeInt, PositiveFloat, PositiveInt, Range, check_value
from ..utils.faiss_support import faiss_available, faiss_has_gpu, flat_l2_index, import_faiss
from ..utils.runtime import device_check
from .base import OutlierSource
from .registry import OUTLIER_SOURCES

Backend = Literal["auto", "faiss", "torch"]
Ranking = Literal["intended", "published"]
BACKENDS = get_args(Backend)
RANKINGS = get_args(Ranking)


def _normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


# ---------------------------------------------------------------------------------------------- params
@dataclass(frozen=True)
class NPOSParams:
    """Sampler sizes (the paper's CIFAR values as defaults).

    K: neighbour rank (self included, see the module docstring), 1 <= K <= queue size - 1.
    select: boundary points per class (largest K-th-NN distance); pick: of them, drawn per call.
    candidates: Gaussian samples per boundary point; keep: kept per boundary point (<= candidates).
    sigma: standard deviation of the Gaussian added to the raw boundary point.
    """

    K: PositiveInt = 300
    select: PositiveInt = 200
    pick: PositiveInt = 2
    candidates: PositiveInt = 600
    keep: PositiveInt = 200
    sigma: PositiveFloat = 0.1

    def check(self, queue_size: int | None = None, where: str = "npos") -> "NPOSParams":
        hints = get_type_hints(NPOSParams, include_extras=True)
        for f in fields(self):
            check_value(f"{where}.{f.name}", getattr(self, f.name), hints[f.name])
        if self.keep > self.candidates:
            raise ConfigError(f"{where}.keep: {self.keep} exceeds candidates ({self.candidates}); "
                              f"keep at most the candidates drawn per boundary point")
        if self.pick > self.select:
            raise ConfigError(f"{where}.pick: {self.pick} exceeds select ({self.select}); cannot draw "
                              f"more boundary points than are selected")
        if queue_size is not None:
            if self.select > queue_size:
                raise ConfigError(f"{where}.select: {self.select} exceeds the queue size ({queue_size})")
            if self.K >= queue_size:
                raise ConfigError(f"{where}.K: {self.K} must be smaller than the queue size ({queue_size}) "
                                  f"(the K-th neighbour counts the point itself)")
        return self


# ---------------------------------------------------------------------------------------------- queues
class ClassQueues:
    """Class-wise FIFO queues of raw embeddings: ``data`` [C, Q, D] (float32), ``count`` [C].

    Rows ``data[c, :count[c]]`` are valid, oldest first. While a queue is not full, new rows are appended;
    once full, each new row pushes out the oldest (``push``). The feature size D is taken from the first
    push. ``state_dict``/``load_state_dict`` save and restore everything (resume).
    """

    def __init__(self, num_classes: int, size: int, dim: int | None = None, device="cpu"):
        if num_classes < 1 or size < 1:
            raise ConfigError(f"npos: queues need num_classes >= 1 and queue_size >= 1, got {num_classes}, {size}")
        self.num_classes, self.size = int(num_classes), int(size)
        self.device = torch.device(device)
        self.data: torch.Tensor | None = None
        self.count = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        self._full = False  # queues never shrink: once full, `full` needs no device read
        if dim is not None:
            self._alloc(dim)

    def _alloc(self, dim: int) -> None:
        self.data = torch.zeros(self.num_classes, self.size, int(dim), device=self.device)

    @property
    def full(self) -> bool:
        if not self._full:  # a host read of the counts until every queue is full, none after
            self._full = bool((self.count == self.size).all())
        return self._full

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append ``features`` [N, D] (detached, raw) to the queues of ``labels`` [N], in row order; a
        class queue that overflows keeps its last ``size`` rows. All on the queues' device, with no
        host synchronisation (the checks are queued on a GPU: :func:`~openood_ext.utils.runtime.device_check`)."""
        if features.ndim != 2 or len(features) != len(labels):
            raise DataError(f"npos: expected features [N, D] with N labels, got {tuple(features.shape)} and "
                            f"{tuple(labels.shape)}")
        if self.data is None:
            self._alloc(features.shape[1])
        elif features.shape[1] != self.data.shape[2]:
            raise DataError(f"npos: embedding size {features.shape[1]} differs from the queue's {self.data.shape[2]}")
        if not len(labels):
            return
        features = features.detach().float().to(self.data.device)
        labels = labels.detach().long().to(self.data.device)
        device_check(torch.isfinite(features).all(),
                     DataError("npos: the embeddings pushed to the ID queue contain NaN/inf (training diverged?)"))
        C, q, (N, D) = self.num_classes, self.size, features.shape
        device_check(((labels >= 0) & (labels < C)).all(), DataError(f"npos: label out of range [0, {C}) in the batch"))
        labels = labels.clamp(0, C - 1)
        onehot = F.one_hot(labels, C)                                          # [N, C]
        rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)    # row i's place among its class's rows
        new = features.new_zeros(C, N, D)
        new[labels, rank] = features                                           # class c's new rows, in order
        count = self.count.to(self.data.device)
        total = count + onehot.sum(0)                                          # [C]
        shift = (total - q).clamp_min(0)                                       # rows dropped from the front
        src = torch.arange(q, device=labels.device)[None] + shift[:, None]     # [C, q]: place in old rows + new rows
        index = torch.where(src < count[:, None], src, q + src - count[:, None]).clamp_max(q + N - 1)
        moved = torch.cat([self.data, new], dim=1).gather(1, index[..., None].expand(-1, -1, D))
        self.data = torch.where((src < total[:, None])[..., None], moved, self.data)
        self.count = total.clamp_max(q)

    def state_dict(self) -> dict:
        return {"data": None if self.data is None else self.data.detach().cpu().clone(),
                "count": self.count.cpu().clone(), "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("size", self.size)) != self.size:
            raise ConfigError(f"npos: saved queue size {state['size']} differs from queue_size {self.size}")
        self.data = None if state["data"] is None else state["data"].to(self.device)
        self.count = state["count"].clone().to(self.device)
        self._full = False


# ---------------------------------------------------------------------------------------------- search
def kth_sqdist_torch(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Squared Euclidean distance to the k-th nearest bank row: queries [C, N, D], bank [C, M, D] -> [C, N]."""
    q2 = (queries * queries).sum(-1, keepdim=True)
    b2 = (bank * bank).sum(-1)[:, None, :]
    d2 = (q2 + b2 - 2.0 * torch.bmm(queries, bank.transpose(1, 2))).clamp_min(0)
    return d2.topk(k, dim=-1, largest=False).values[..., -1]


def kth_sqdist_faiss(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Same as :func:`kth_sqdist_torch` with one faiss ``IndexFlatL2`` per class: on the tensors' GPU
    with faiss-gpu (the process's resources for that GPU, created once), else on the host."""
    gpu = None
    if queries.is_cuda and faiss_has_gpu():
        gpu = queries.device.index if queries.device.index is not None else torch.cuda.current_device()
    out = []
    for c, (qc, bc) in enumerate(zip(queries, bank)):
        index = flat_l2_index(bc.shape[1], gpu, slot=("npos", c))
        index.add(np.ascontiguousarray(bc.detach().float().cpu().numpy()))
        dist, _ = index.search(np.ascontiguousarray(qc.detach().float().cpu().numpy()), k)
        out.append(torch.from_numpy(dist[:, -1]))
    return torch.stack(out).to(queries.device).clamp_min(0)


def _kth(queries, bank, k, backend, chunk_elems):
    if backend == "faiss":
        return kth_sqdist_faiss(queries, bank, k)
    per_class = queries.shape[1] * bank.shape[1]
    step = max(1, chunk_elems // max(per_class, 1))
    return torch.cat([kth_sqdist_torch(queries[i:i + step], bank[i:i + step], k)
                      for i in range(0, len(queries), step)])


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    """``backend`` with ``auto`` decided for queues on ``device`` (see the module docstring)."""
    if backend not in BACKENDS:
        raise ConfigError(f"npos.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        cuda = device is not None and torch.device(device).type == "cuda"
        return "faiss" if faiss_available() and not cuda else "torch"
    if backend == "faiss":
        import_faiss("npos.backend")
    return backend


# ---------------------------------------------------------------------------------------------- sampler
@dataclass
class NPOSSample:
    """What :func:`npos_sample` returns.

    outliers: [C, pick, keep, D] raw outliers; boundary: [C, pick, D] raw boundary points they came from;
    boundary_index: [C, pick] their queue rows; scores: [C, pick, keep] the kept candidates' K-th-NN
    squared distances (normalised space); boundary_scores: [C, pick] the boundary points' own.
    """

    outliers: torch.Tensor
    boundary: torch.Tensor
    boundary_index: torch.Tensor
    scores: torch.Tensor
    boundary_scores: torch.Tensor

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(outliers [C * pick * keep, D], their source class [C * pick * keep])."""
        c, p, k, d = self.outliers.shape
        labels = torch.arange(c, device=self.outliers.device).repeat_interleave(p * k)
        return self.outliers.reshape(-1, d), labels


@torch.no_grad()
def npos_sample(queues: torch.Tensor, params: NPOSParams = NPOSParams(), *,
                generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                picks: torch.Tensor | None = None, backend: str = "auto", ranking: str = "intended",
                chunk_elems: int = 2 ** 25) -> NPOSSample:
    """Synthesise outliers around the boundary of every class (see the module docstring).

    Args:
        queues: raw embeddings [C, Q, D] (or [Q, D] for one class), finite, rows of nonzero norm.
        params: :class:`NPOSParams` (checked against Q).
        generator: torch generator for the boundary-point choice and the Gaussian (on ``queues``' device).
        noise: optional fixed G [candidates, D] (else drawn from ``generator``).
        picks: optional fixed choice [C, pick] of positions in each class's boundary list (0 = the largest
            K-th-NN distance, as the published ``minD_idx[np.random.choice(select, pick)]``); else drawn.
        backend: ``auto`` | ``faiss`` | ``torch``; ranking: ``intended`` | ``published`` (module docstring).
        chunk_elems: torch backend: at most this many distances per batched matmul.
    """
    if queues.ndim == 2:
        queues = queues[None]
    if queues.ndim != 3:
        raise DataError(f"npos: expected queues [C, Q, D], got shape {tuple(queues.shape)}")
    if ranking not in RANKINGS:
        raise ConfigError(f"npos.ranking: expected one of {', '.join(RANKINGS)}, got {ranking!r}")
    C, Q, D = queues.shape
    params.check(Q)
    backend = resolve_backend(backend, queues.device)
    device_check(torch.isfinite(queues).all(), DataError("npos: the ID embeddings contain NaN/inf"))
    device_check((queues.norm(dim=-1) != 0).all(),
                 DataError("npos: an ID embedding in the queue has zero norm (is the queue filled?)"))
    raw = queues.float()
    unit = _normalize(raw)
    dev = raw.device
    # 1-2. boundary points: largest K-th-NN distance within the class (self included)
    kth_self = _kth(unit, unit, params.K, backend, chunk_elems)                       # [C, Q]
    top = kth_self.topk(params.select, dim=1).indices                                 # [C, select]
    if picks is None:
        choice = torch.stack([torch.randperm(params.select, generator=generator, device="cpu")[:params.pick]
                              for _ in range(C)]).to(dev)                             # [C, pick]
    else:
        choice = torch.as_tensor(picks).long().reshape(C, -1).to(dev)
        if choice.shape[1] != params.pick or choice.min() < 0 or choice.max() >= params.select:
            raise DataError(f"npos: picks must be [{C}, {params.pick}] positions below select={params.select}")
    b_index = top.gather(1, choice)                                                   # [C, pick]
    boundary = raw.gather(1, b_index[..., None].expand(-1, -1, D))                    # [C, pick, D]
    b_scores = kth_self.gather(1, b_index)
    # 3. candidates around the raw boundary points, one G shared by all
    if noise is None:
        noise = torch.randn(params.candidates, D, generator=generator, device="cpu")
    noise = noise.to(dev, torch.float32)
    if noise.shape != (params.candidates, D):
        raise DataError(f"npos: noise must be [{params.candidates}, {D}], got {tuple(noise.shape)}")
    cand = boundary[:, :, None, :] + params.sigma * noise[None, None]                 # [C, pick, N, D]
    # 4. rejection: K-th-NN distance of each normalised candidate to its class queue
    P, N = params.pick, params.candidates
    score = _kth(_normalize(cand).reshape(C, P * N, D), unit, params.K, backend, chunk_elems)  # [C, P*N]
    if ranking == "intended":
        ranked = score.view(C, P, N)
    else:  # published: view(length, -1) on block-ordered scores -> candidate (i, r) gets score[r * P + i]
        ranked = score.view(C, N, P).transpose(1, 2)
    keep = ranked.topk(params.keep, dim=2).indices                                    # [C, P, keep]
    outliers = cand.gather(2, keep[..., None].expand(-1, -1, -1, D))
    kept_scores = score.view(C, P, N).gather(2, keep)
    return NPOSSample(outliers, boundary, b_index, kept_scores, b_scores)


# ---------------------------------------------------------------------------------------------- source
@OUTLIER_SOURCES.register("npos")
class NPOSSynthesizer(OutlierSource):
    """OUTLIER_SOURCES ``npos``: class queues + :func:`npos_sample` for a training run (``kind = "features"``).

    Args (``configs/synthesizers/npos.yml``; the paper's CIFAR values as defaults):
        queue_size: embeddings kept per class (1000). K, select, pick, candidates, keep, sigma: the sampler
            (:class:`NPOSParams`). start_epoch: 0-based epoch from which :meth:`ready` can be true (200 of
            500 in the paper). backend: auto | faiss | torch. ranking: intended | published.
        num_classes: taken from the benchmark in ``setup`` when not given.

    The trainer calls ``update(features, labels)`` every step (queues are maintained from the first
    epoch), then ``synthesize()`` when ``ready(epoch)``: C * pick * keep raw outliers [*, D].
    ``check()`` warns when a class has fewer training images than ``queue_size``. The queue then fills
    with augmented repeats of the same images over several epochs; while some queue is not full at or
    after ``start_epoch``, ``ready`` is False and a warning says so once (no silent empty batches).
    """

    kind = "features"

    def __init__(self, queue_size: Annotated[int, Range(2)] = 1000, K: PositiveInt = 300, select: PositiveInt = 200,
                 pick: PositiveInt = 2, candidates: PositiveInt = 600, keep: PositiveInt = 200,
                 sigma: PositiveFloat = 0.1, start_epoch: NonNegativeInt = 200, backend: Backend = "auto",
                 ranking: Ranking = "intended", num_classes: PositiveInt | None = None):
        try:
            self.params = NPOSParams(K, select, pick, candidates, keep, sigma).check(queue_size, where="outliers")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        self.queue_size, self.start_epoch = queue_size, start_epoch
        self.backend, self.ranking = backend, ranking
        self.num_classes = num_classes
        self.queues: ClassQueues | None = None
        self.generator = torch.Generator()
        self._warned_waiting = False
        self.ctx = None

    # ------------------------------------------------------------------ contract
    def setup(self, ctx) -> None:
        super().setup(ctx)
        if self.num_classes is None:
            self.num_classes = int(getattr(ctx.benchmark, "num_classes", 0) or 0) or None
        if self.num_classes is None:
            raise ConfigError("trainer.outliers.num_classes: npos needs the number of classes (no benchmark)")
        self.generator.manual_seed(int(ctx.seed) + 20)
        self.queues = ClassQueues(self.num_classes, self.queue_size, device=ctx.device)

    def check(self) -> None:
        resolve_backend(self.backend)
        bench = getattr(self.ctx, "benchmark", None)
        if bench is None:
            return
        try:
            labels = torch.as_tensor(bench.dataset(bench.split("id_train")).labels())
        except Exception:  # noqa: BLE001 -- counting is advisory
            return
        counts = torch.bincount(labels.long(), minlength=self.num_classes)
        small = [(c, int(n)) for c, n in enumerate(counts.tolist()) if n < self.queue_size]
        if any(n == 0 for _, n in small):
            raise DataError(f"npos: class(es) {[c for c, n in small if n == 0]} have no training image, "
                            f"so their queue never fills")
        if small:
            warnings.warn(f"npos: {len(small)} class(es) have fewer training images than queue_size="
                          f"{self.queue_size} (smallest: {min(n for _, n in small)} images); their queues will hold several "
                          f"augmented views of the same images, filled over ceil(queue_size / (images x views)) "
                          f"epochs (a smaller trainer.outliers.queue_size avoids that)", stacklevel=2)

    def describe(self) -> str:
        p = self.params
        return (f"npos (queue {self.queue_size}/class, K={p.K}, select {p.select}, pick {p.pick}, "
                f"{p.candidates} candidates, keep {p.keep}, sigma {p.sigma}, from epoch {self.start_epoch}, "
                f"{self.backend}, ranking {self.ranking})")

    def state_dict(self) -> dict:
        return {"queues": None if self.queues is None else self.queues.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("queues") is not None and self.queues is not None:
            self.queues.load_state_dict(state["queues"])
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])

    # ------------------------------------------------------------------ use
    def _ensure(self, num_classes: int, device) -> None:
        if self.queues is None:  # used outside a run: build lazily
            self.num_classes = self.num_classes or num_classes
            self.queues = ClassQueues(self.num_classes, self.queue_size, device=device)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Push raw embeddings [N, D] (detached here) of ID samples with labels [N]."""
        if self.queues is None:
            self._ensure(int(labels.max()) + 1 if len(labels) else 1, features.device)
        self.queues.push(features.detach(), labels)

    def ready(self, epoch: int) -> bool:
        """True from ``start_epoch`` on once every class queue is full (warns once while waiting)."""
        if epoch < self.start_epoch or self.queues is None:
            return False
        if self.queues.full:
            return True
        if not self._warned_waiting:
            filled = self.queues.count.tolist()
            msg = (f"npos: synthesis waits at epoch {epoch + 1}: not every class queue is full yet "
                   f"(filled {min(filled)}..{max(filled)} of {self.queue_size}); no outliers until then")
            logging.getLogger("openood_ext").warning(msg)
            self._warned_waiting = True
        return False

    def synthesize(self, return_sample: bool = False):
        """Raw outliers [C * pick * keep, D] from the current queues (every queue must be full)."""
        if self.queues is None or not self.queues.full:
            raise DataError("npos: synthesize() called before every class queue is full (check ready())")
        sample = npos_sample(self.queues.data, self.params, generator=self.generator,
                             backend=self.backend, ranking=self.ranking)
        return sample if return_sample else sample.flat()[0]

    @property
    def outliers_per_call(self) -> int:
        return (self.num_classes or 0) * self.params.pick * self.params.keep


def expected_fill_epochs(class_counts, queue_size: int, views: int) -> int:
    """Epochs until the smallest class queue is full when each image pushes ``views`` embeddings."""
    smallest = min(int(n) for n in class_counts)
    return math.ceil(queue_size / max(1, smallest * views))
