"""The postprocessor scheduler: which split needs which pass, then fit and score every postprocessor.

Plain objects in, arrays out (no run context, no YAML), so pipelines, benchmarks and notebooks share it::

    sched = Scheduler({"msp": msp, "gram": gram, "odin": odin}, source, net, device)
    result = sched.run(["id_test", "near_a", "far_b"], optional=["near_a", "far_b"])
    result.scores["gram"]["id_test"].conf     # float64 [N], higher = more in-distribution

Each postprocessor takes one *route* (:func:`route`):

* ``outputs``: fitted and scored from the cached :class:`~openood_ext.features.NetOutputs` only;
* ``taps``: fitted from the layer taps of the fit split's shared pass and scored from the taps of each
  scored split's shared pass (``uses_taps``); no pass of its own;
* ``network``: re-runs the network on each scored split's loader (``needs_network``: input gradients,
  perturbed inputs), after ``attach_network``.

Among the ``network`` methods, those that perturb their inputs along an input gradient and offer a
``gradient_scorer(loader)`` (ODIN, iODIN, AdaSCALE; see :mod:`.input_gradients`) share one clean forward
pass with gradients per micro-batch on each scored split, and one backward per distinct gradient (ODIN and
iODIN at the same temperature take the same one) (``share_gradients=True``, the default). That clean pass
is each scored split's shared pass of :meth:`Scheduler.prepare` itself, run with gradients on in their
micro-batches (:class:`~openood_ext.features.GraphConsumer`), where the source's pass is the plain fp32
network (``source.precision`` fp32, no compiled wrapper); otherwise the first of them to be scored runs
their clean passes. Their scores are those each computes alone; ``ScheduleResult.seconds`` keeps each
one's own part (fit, backward, perturbed passes) and ``ScheduleResult.shared_seconds`` their clean passes
when they run apart (with the image loading).

The ``network`` methods read their splits through :meth:`Scheduler.loader_for`, which keeps each split's
loader batches in memory after the first complete read (``batch_cache_mib``), so the methods after the
first replay them instead of decoding the images again.

With ``share_taps=False`` (one postprocessor under APS, whose grid points are built one by one) a tap
method runs its own passes over the loaders instead, like a ``network`` one; the shared passes are
then never re-run. Under ``share_taps=True`` the fit split and every scored split go through the network
once more with the tap consumers attached (tapped layers are not cached), and only when some
postprocessor taps them.

``source`` is anything with ``outputs(split, consumers=())`` (a split's NetOutputs; with tap
consumers it runs the network and the outputs' ``tap_results`` hold their results), ``loader_for(split)``
(a fresh unshuffled loader yielding ``(images, labels[, n_skipped])``) and ``example(split)`` (a couple of
images on the device, to probe layer shapes): :class:`~openood_ext.pipelines.outputs.OutputStore`, or
:class:`LoaderSource` / :class:`FixedSource` here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..evaluators.ood import SplitScores
from ..features import EmptySplit, NetOutputs, Tap, extract_outputs
from ..utils.runtime import autocast, check_precision
from .base import Postprocessor, as_postprocessor

ROUTES = ("outputs", "taps", "network")


def route(pp: Postprocessor, share_taps: bool = True) -> str:
    """The pass a postprocessor needs: ``outputs``, ``taps`` or ``network`` (see the module docstring)."""
    if getattr(pp, "uses_taps", False):
        return "taps" if share_taps else "network"
    return "network" if getattr(pp, "needs_network", False) else "outputs"


def split_result(result) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
    """(conf, preds or None, parts or None) from what a score consumer or ``score_loader`` returned: conf
    [N]; ``(conf [N], preds [N])`` from a method that predicts classes its own way; ``(conf, preds, parts)``
    from a method whose scale depends on the evaluated set (VMDLS's published shift, see
    :class:`~openood_ext.evaluators.ood.SplitScores`)."""
    if isinstance(result, tuple) and len(result) in (2, 3):
        return result[0], result[1], (result[2] if len(result) == 3 else None)
    return result, None, None


@dataclass
class ScheduleResult:
    """What :meth:`Scheduler.run` returns.

    Attributes:
        scores: label -> split -> :class:`SplitScores` (conf float64 [N], higher = more ID; preds int64
            [N]; labels [N], -1 where unknown).
        seconds: label -> seconds of its own fit and scoring: for a tap method its consumers' work in the
            shared passes (reductions in the hooks, updates, fit), for the gradient group its backward
            and perturbed passes; the shared passes themselves excluded.
        pass_seconds: split -> seconds of the shared pass that carried tap consumers (fit split included).
        shared_seconds: ``"input gradients: <labels>"`` -> seconds of the clean forward passes with
            gradients (and image loading) those methods shared, on every scored split, when they ran
            apart from the shared passes.
        tap_seconds: split -> seconds the tap consumers of its shared pass took themselves (reductions in
            the hooks, updates, finish); with ``gradient_seconds`` it splits ``pass_seconds`` into the
            methods' own work and the pass.
        gradient_seconds: split -> seconds the gradient methods riding its shared pass took themselves
            (their backward and perturbed passes; also in their ``seconds``).
        skipped: optional splits of which no image could be read -> their EmptySplit.
    """

    scores: dict[str, dict[str, SplitScores]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    pass_seconds: dict[str, float] = field(default_factory=dict)
    shared_seconds: dict[str, float] = field(default_factory=dict)
    tap_seconds: dict[str, float] = field(default_factory=dict)
    gradient_seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, EmptySplit] = field(default_factory=dict)

    def conf(self, label: str) -> dict[str, np.ndarray]:
        """split -> confidences of one postprocessor."""
        return {split: s.conf for split, s in self.scores[label].items()}


class Scheduler:
    """Fit and score built postprocessors on a source's splits with the fewest network passes.

    Args:
        postprocessors: label -> built postprocessor (any object with ``score``; wrapped by
            :func:`as_postprocessor`). Fitted and scored in this order.
        source: see the module docstring.
        net, device: the network (attached to ``taps``/``network`` postprocessors); None when every
            postprocessor takes the ``outputs`` route.
        share_taps: tap methods ride the shared passes (True) or run their own (False, APS).
        share_gradients: input-gradient methods with a ``gradient_scorer`` share their clean forward
            passes and equal gradients (True) or each runs its own (False); the scores are the same.
        batch_cache_mib: the ``network`` methods' loaders (:meth:`loader_for`) keep each split's batches
            in memory after their first full read, up to this many MiB in all, so that the methods after
            the first do not decode the images again (0: off). The batches are the loader's own tensors:
            the scores do not change.
        fit_split, val_split: the ID training split (fit, and the tap fit pass) and the ID validation split.
        clock: the timer of ``seconds``/``pass_seconds`` (``time.process_time`` for CPU time).

    Use :meth:`run`, or :meth:`prepare` once and then :meth:`score` per label (to interleave other work,
    as the test_ood pipeline does with APS searches, in the configured order).
    """

    def __init__(self, postprocessors: Mapping[str, object], source, net: torch.nn.Module | None = None,
                 device: torch.device | str | None = None, *, share_taps: bool = True,
                 share_gradients: bool = True, fit_split: str = "id_train", val_split: str = "id_val",
                 clock: Callable[[], float] = time.perf_counter, batch_cache_mib: float = 512):
        self.pps = {label: as_postprocessor(pp) for label, pp in postprocessors.items()}
        self.source, self.net, self.device = source, net, device
        self.share_taps, self.fit_split, self.val_split, self.clock = share_taps, fit_split, val_split, clock
        self.routes = {label: route(pp, share_taps) for label, pp in self.pps.items()}
        #: the labels scored from one shared gradient pass (empty: none is shared)
        self.gradient_group = [label for label, pp in self.pps.items()
                               if self.routes[label] == "network" and callable(getattr(pp, "gradient_scorer", None))]
        if not share_gradients or len(self.gradient_group) < 2:
            self.gradient_group = []
        self._gradient_conf: dict[str, dict[str, object]] = {}
        self._gradient_seconds: dict[str, float] = {}
        self._batches = BatchCache(int(batch_cache_mib * 2 ** 20))
        self.outputs: dict[str, NetOutputs] = {}
        self.result = ScheduleResult()
        self._tap_conf: dict[str, dict[str, object]] = {}
        self._tap_own: dict[str, float] = {}  # label -> seconds of its tap consumers' own work
        self._splits: list[str] = []
        self._prepared = False

    # ------------------------------------------------------------------ passes
    def prepare(self, splits: Sequence[str], optional: Iterable[str] = ()) -> ScheduleResult:
        """Attach the network where needed, run the fit split's pass (with the tap methods' fitting
        consumers), fit the tap methods, and get every split's outputs (with their scoring consumers).

        A split in ``optional`` of which no image can be read is left out (``result.skipped``); any other
        split's EmptySplit is raised.
        """
        optional = set(optional)
        for label, pp in self.pps.items():
            if self.routes[label] != "outputs":
                pp.attach_network(self.net, self.device, self.loader_for)
        # a method may ride the shared pass on some networks only (RankFeat): it says so once attached
        self.routes = {label: route(pp, self.share_taps) for label, pp in self.pps.items()}
        tapped = {label: pp for label, pp in self.pps.items() if self.routes[label] == "taps"}
        layered = {label: pp for label, pp in self.pps.items() if self.routes[label] != "outputs"}
        fitting = {}
        if layered and self.share_taps:
            example = self.source.example(self.fit_split)
            fitting = {label: c for label, c in ((label, pp.fit_taps(self.net, example)) for label, pp in layered.items())
                       if c is not None}
        self.outputs[self.fit_split] = self._pass(self.fit_split, fitting)
        self.outputs[self.val_split] = self.source.outputs(self.val_split)
        for pp in tapped.values():  # fitted before the scored splits' passes, which score them
            pp.fit(self.outputs[self.fit_split], val_outputs=self.outputs[self.val_split],
                   **fit_extras(pp, self.source))
        self._tap_conf = {label: {} for label in tapped}
        riding = self._gradients_ride_shared_pass(splits)
        for split in splits:
            scorers = {label: pp.score_taps() for label, pp in tapped.items()}
            gradients = self._gradient_consumer(split) if riding else None
            try:
                out = self._pass(split, scorers, gradients)
            except EmptySplit as exc:
                if split not in optional:
                    raise
                self.result.skipped[split] = exc
                continue
            self.outputs[split] = out
            self._splits.append(split)
            for label, result in zip(tapped, out.tap_results if scorers else ()):
                self._tap_conf[label][split] = result
            if gradients is not None:
                for label, conf, own in zip(self.gradient_group, out.tap_results[-1], gradients.own):
                    self._gradient_conf[label][split] = conf
                    self._gradient_seconds[label] += own
                self.result.gradient_seconds[split] = sum(gradients.own)
        self._prepared = True
        return self.result

    def _pass(self, split: str, consumers: dict, gradients=None) -> NetOutputs:
        """The split's shared pass with the tap consumers (label -> consumer; each one's own work is
        timed and charged to its label) and the riding gradient group's consumer."""
        if not consumers and gradients is None:
            return self.source.outputs(split)
        timed = {label: _TimedTaps(c, self.clock) for label, c in consumers.items()}
        t = self.clock()
        out = self.source.outputs(split, [*timed.values(), *([gradients] if gradients is not None else [])])
        self.result.pass_seconds[split] = self.clock() - t
        self.result.tap_seconds[split] = sum(c.seconds for c in timed.values())
        for label, c in timed.items():
            self._tap_own[label] = self._tap_own.get(label, 0.0) + c.seconds
        return out

    def _gradients_ride_shared_pass(self, splits: Sequence[str]) -> bool:
        """Fit the gradient group and say whether its clean passes can be the scored splits' shared
        passes: the source's pass is the fp32 network itself (as the group's own passes are), and the
        group's scorers share one micro-batch size."""
        if not self.gradient_group or not splits or getattr(self.source, "precision", "fp32") != "fp32" \
                or getattr(self.source, "forward_net", self.net) is not self.net:
            return False
        self._fit_gradient_group()
        return len({s.chunk for s in self._group_scorers(splits[0])}) == 1

    def _fit_gradient_group(self) -> None:
        if self._gradient_conf:  # fitted already
            return
        self._gradient_seconds = dict.fromkeys(self.gradient_group, 0.0)
        for label in self.gradient_group:
            t = self.clock()
            self.pps[label].fit(self.outputs[self.fit_split], val_outputs=self.outputs[self.val_split])
            self._gradient_seconds[label] += self.clock() - t
        self._gradient_conf = {label: {} for label in self.gradient_group}

    def _group_scorers(self, split: str) -> list:
        loader = self.loader_for(split)  # read for its Normalize transform (ODIN's step size) only
        return [self.pps[label].gradient_scorer(loader) for label in self.gradient_group]

    def _gradient_consumer(self, split: str):
        from .input_gradients import ScorerGroup
        return ScorerGroup(self.net, self._group_scorers(split), clock=self.clock)

    def loader_for(self, split: str):
        """The loader the ``network`` methods read a split from: the source's, replayed from memory once
        it has been read in full (see ``batch_cache_mib``)."""
        return self._batches.loader(split, self.source.loader_for)

    @property
    def splits(self) -> list[str]:
        """The scored splits that were read (optional empty ones left out), in order."""
        return list(self._splits)

    # ------------------------------------------------------------------ fit and score
    def score(self, label: str) -> dict[str, SplitScores]:
        """Fit one postprocessor (tap methods were fitted by :meth:`prepare`) and score it on every split."""
        if not self._prepared:
            raise RuntimeError("Scheduler.score: call prepare(splits) first")
        pp, how = self.pps[label], self.routes[label]
        shared = label in self.gradient_group
        if shared and not self._gradient_conf.get(label):
            self._score_gradient_group()
        t = self.clock()
        if how != "taps" and not shared:
            pp.fit(self.outputs[self.fit_split], val_outputs=self.outputs[self.val_split],
                   **fit_extras(pp, self.source))
        scored = {}
        for split in self._splits:
            outputs = self.outputs[split]
            if how == "taps":
                result = self._tap_conf[label][split]
            elif shared:
                result = self._gradient_conf[label][split]
            elif how == "network":
                result = pp.score_loader(self.loader_for(split))
            else:
                result = pp.score(outputs)
            conf, preds, parts = split_result(result)
            conf = np.asarray(conf, dtype=np.float64)
            if conf.shape != (len(outputs),):
                raise DataError(f"postprocessor '{pp.name}' returned {conf.shape} scores on '{split}', "
                                f"expected ({len(outputs)},)")
            preds = pp.predict(outputs) if preds is None else np.asarray(preds)
            labels = outputs.labels.numpy() if outputs.labels is not None else np.full(len(outputs), -1)
            scored[split] = SplitScores(conf, preds, labels, parts,
                                        getattr(pp, "rescore_pair", None) if parts is not None else None)
        self.result.seconds[label] = (self.clock() - t + (self._gradient_seconds[label] if shared else 0.0)
                                      + self._tap_own.get(label, 0.0))
        self.result.scores[label] = scored
        return scored

    def _score_gradient_group(self) -> None:
        """Fit every method of :attr:`gradient_group`, then score them all on every split, each split from
        one gradient pass per micro-batch size (see :mod:`.input_gradients`)."""
        from .input_gradients import run_gradient_pass
        group = self.gradient_group
        self._fit_gradient_group()
        seconds = self._gradient_seconds
        key = "input gradients: " + ", ".join(group)
        self.result.shared_seconds[key] = 0.0
        for split in self._splits:
            t = self.clock()
            loader = self.loader_for(split)
            scorers = {label: self.pps[label].gradient_scorer(loader) for label in group}
            by_chunk: dict[int, list[str]] = {}
            for label, scorer in scorers.items():
                by_chunk.setdefault(scorer.chunk, []).append(label)
            self.result.shared_seconds[key] += self.clock() - t
            for labels in by_chunk.values():
                results, took = run_gradient_pass(self.net, loader, self.device,
                                                  [scorers[label] for label in labels], desc=f"gradients {split}",
                                                  clock=self.clock)
                self.result.shared_seconds[key] += took["shared"]
                for label, conf, own in zip(labels, results, took["scorers"]):
                    self._gradient_conf[label][split] = conf
                    seconds[label] += own

    def run(self, splits: Sequence[str], optional: Iterable[str] = ()) -> ScheduleResult:
        """:meth:`prepare`, then :meth:`score` every postprocessor in order."""
        self.prepare(splits, optional)
        for label in self.pps:
            self.score(label)
        return self.result



class _TimedTaps:
    """A tap consumer whose own work (its reductions in the hooks, updates and finish) is timed."""

    def __init__(self, consumer, clock: Callable[[], float]):
        self.clock, self.seconds = clock, 0.0
        self.taps = [Tap(t.layer, t.reduce, self._timed(t.fn)) for t in consumer.taps]
        self.update, self.finish = self._timed(consumer.update), self._timed(consumer.finish)

    def _timed(self, fn):
        def timed(*args):
            start = self.clock()
            try:
                return fn(*args)
            finally:
                self.seconds += self.clock() - start
        return timed


def fit_alone(pp, source, net=None, device=None, fit_split: str = "id_train", val_split: str = "id_val"):
    """Attach the network where needed and fit one postprocessor without scoring it, tap methods on
    their own passes (an APS grid that the method scores jointly, see ``pipelines/aps.py``)."""
    if route(pp, share_taps=False) != "outputs":
        pp.attach_network(net, device, source.loader_for)
    pp.fit(source.outputs(fit_split), val_outputs=source.outputs(val_split), **fit_extras(pp, source))
    return pp


def fit_extras(pp, source) -> dict:
    """``fit``'s keyword arguments beyond the ID splits: ``split_outputs`` ({split: NetOutputs}) of the
    splits a method names in ``fit_splits`` (GrOOD's OOD prototype reads ood_val), from the source's cached
    outputs; nothing for the others. A split the source lacks is a DataError naming the method."""
    wanted = tuple(getattr(pp, "fit_splits", ()) or ())
    if not wanted:
        return {}
    got = {}
    for split in wanted:
        try:
            got[split] = source.outputs(split)
        except (KeyError, ConfigError, EmptySplit) as exc:
            raise DataError(f"postprocessor '{pp.name}' fits on split '{split}', which cannot be read: "
                            f"{str(exc).splitlines()[0]}") from exc
    return {"split_outputs": got}


def fit_and_score(pp, source, splits: Sequence[str], net=None, device=None, **kw) -> dict[str, np.ndarray]:
    """split -> confidences (float64 [N]) of one postprocessor fitted on its own, tap methods on their
    own passes (one APS grid point)."""
    sched = Scheduler({"pp": pp}, source, net, device, share_taps=False, **kw)
    sched.prepare(splits)
    return {split: s.conf for split, s in sched.score("pp").items()}


class BatchCache:
    """Batches of split loaders kept in memory, up to ``budget`` bytes in all (a split that does not fit
    is not kept). ``loader(split, make)`` returns a :class:`_Replay` of a kept split, else a
    :class:`_Recording` of ``make(split)`` that keeps the split's batches when one iteration completes
    within the budget. ``reads`` counts the iterations that went to a source loader."""

    def __init__(self, budget: int):
        self.budget, self.used, self.kept, self.reads = budget, 0, {}, 0

    def loader(self, split: str, make: Callable[[str], object]):
        if split in self.kept:
            return _Replay(*self.kept[split])
        loader = make(split)
        return _Recording(self, split, loader) if self.budget > 0 else loader

    def keep(self, split: str, loader, batches: list) -> None:
        size = sum(t.numel() * t.element_size() for b in batches for t in b if isinstance(t, torch.Tensor))
        if split not in self.kept and self.used + size <= self.budget:
            self.kept[split] = (loader, batches)
            self.used += size


class _Recording:
    """A source loader whose batches are handed to the cache after a complete iteration; ``dataset`` (read
    for its Normalize transform) and ``len`` are the loader's."""

    def __init__(self, cache: BatchCache, split: str, loader):
        self.cache, self.split, self.inner = cache, split, loader
        self.dataset = getattr(loader, "dataset", None)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        self.cache.reads += 1
        batches, size = [], 0
        for batch in self.inner:
            if batches is not None:
                size += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
                if size <= self.cache.budget - self.cache.used:
                    batches.append(batch)
                else:  # the split does not fit: stop keeping it
                    batches = None
            yield batch
        if batches is not None:  # only a complete iteration is kept (first_batch stops early)
            self.cache.keep(self.split, self.inner, batches)


class _Replay:
    """A kept split's batches, replayed; ``dataset`` and ``len`` are its source loader's."""

    def __init__(self, loader, batches: list):
        self.dataset, self.batches = getattr(loader, "dataset", None), batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


# ---------------------------------------------------------------------- sources
class LoaderSource:
    """A source over plain loaders (``{split: DataLoader}``): each split's outputs computed once, in memory.
    ``precision`` (fp32, bf16, fp16) is the shared passes' autocast, as ``precision:`` of ``test_ood``."""

    def __init__(self, net: torch.nn.Module, loaders: Mapping[str, object], device: torch.device | str = "cpu",
                 precision: str = "fp32"):
        self.net, self.loaders, self.device = net, dict(loaders), device
        self.precision = check_precision("precision", precision, torch.device(device))
        self.memo: dict[str, NetOutputs] = {}
        self.forward_passes = 0

    def outputs(self, split: str, consumers: Sequence = ()) -> NetOutputs:
        if consumers or split not in self.memo:
            self.forward_passes += 1
            with autocast(self.precision, torch.device(self.device)):
                self.memo[split] = extract_outputs(self.net, self.loader_for(split), self.device,
                                                   desc=f"forward {split}", consumers=consumers)
        return self.memo[split]

    def loader_for(self, split: str):
        if split not in self.loaders:
            raise KeyError(f"no loader for split '{split}' (have {', '.join(self.loaders)})")
        return self.loaders[split]

    def example(self, split: str) -> torch.Tensor:
        for batch in self.loader_for(split):
            if len(batch[0]):
                return batch[0][:2].to(self.device)
        raise EmptySplit(f"{split}: no readable image to probe the network's layers with")


class FixedSource:
    """A source of given outputs only (``{split: NetOutputs}``, e.g. synthetic): every postprocessor must
    take the ``outputs`` route."""

    def __init__(self, outputs: Mapping[str, NetOutputs]):
        self.memo = dict(outputs)

    def outputs(self, split: str, consumers: Sequence = ()) -> NetOutputs:
        if consumers:
            raise ValueError("FixedSource has no network to run layer taps on")
        return self.memo[split]

    def loader_for(self, split: str):
        raise ValueError("FixedSource has no images: only postprocessors on the 'outputs' route can run")

    def example(self, split: str):
        return self.loader_for(split)
