"""One forward pass with input gradients, shared by the methods that perturb their inputs along a gradient.

ODIN, iODIN and AdaSCALE score a micro-batch in three steps: (1) a forward pass of the clean images with
gradients on, (2) the input gradient of a loss on that pass's outputs, (3) forward passes over images
perturbed along it. Step (1) is the same pass for all of them, and ODIN and iODIN at the same temperature
take the same gradient in step (2), and AdaSCALE's two variants the same perturbed pass in step (3). A
:class:`GradientBatch` holds the pass of one micro-batch and memoises its input gradients (and such shared
values) by key, so that :func:`run_gradient_pass` runs step (1) once per micro-batch for every
method given to it and each distinct gradient once::

    scorers = [odin.gradient_scorer(loader), iodin.gradient_scorer(loader)]
    (odin_conf, iodin_conf), seconds = run_gradient_pass(net, loader, device, scorers)
    # one clean forward pass and one backward per micro-batch for both methods

A method scoring alone goes through the same function with itself only, so its scores are the same,
bit for bit, alone or in a group (the group's members must give the network the same micro-batches:
they share one ``chunk``, and the network must return the same logits with and without
``return_feature``, as every :class:`~openood_ext.networks.small_cnn.Classifier` does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .layer_features import iter_images


class GradientBatch:
    """The clean forward pass of one micro-batch with gradients on, and its memoised input gradients.

    Attributes:
        x: the images [B, C, H, W] (a leaf that requires grad).
        logits: [B, K] of ``net(x)``; features: [B, D] penultimate features when asked for
            (``net(x, return_feature=True)``), else None.
        backward_calls: how many distinct gradients were computed (one backward each).
    """

    def __init__(self, net: torch.nn.Module, images: torch.Tensor, features: bool = False):
        self.net = net
        self.x = images.detach().clone().requires_grad_(True)
        out = net(self.x, return_feature=True) if features else net(self.x)
        self._hold(*(out if features else (out, None)))

    @classmethod
    def of_pass(cls, net: torch.nn.Module, x: torch.Tensor, logits: torch.Tensor,
                features: torch.Tensor | None) -> GradientBatch:
        """The batch of a clean pass already run elsewhere (a shared forward pass's
        :class:`~openood_ext.features.GraphConsumer` micro-batch): x the leaf, logits/features attached to it."""
        batch = cls.__new__(cls)
        batch.net, batch.x = net, x
        batch._hold(logits, features)
        return batch

    def _hold(self, logits: torch.Tensor, features: torch.Tensor | None) -> None:
        self.logits, self.features = logits, features
        self._grads: dict[Hashable, torch.Tensor] = {}
        self._values: dict[Hashable, object] = {}
        self.backward_calls = 0

    def input_grad(self, key: Hashable, loss: Callable[[GradientBatch], torch.Tensor]) -> torch.Tensor:
        """d loss(self) / d x [B, C, H, W]; computed once per ``key`` (methods that name the same key must
        mean the same loss). The graph is kept for the other keys until the batch is dropped."""
        if key not in self._grads:
            (self._grads[key],) = torch.autograd.grad(loss(self), self.x, retain_graph=True)
            self.backward_calls += 1
        return self._grads[key]

    def shared(self, key: Hashable, compute: Callable[[GradientBatch], object]):
        """``compute(self)``, once per ``key``: what several methods derive identically from this batch
        (AdaSCALE-A's and AdaSCALE-L's perturbed pass); the key must name everything the value depends on."""
        if key not in self._values:
            self._values[key] = compute(self)
        return self._values[key]


@dataclass
class GradientScorer:
    """How one method scores the micro-batches of a shared gradient pass.

    Attributes:
        score: :class:`GradientBatch` -> a CPU tensor [B] (or a list of them, e.g. one per APS setting).
        chunk: micro-batch size (samples per forward-backward pass); methods share a pass only with
            the same chunk.
        features: whether ``score`` reads ``batch.features``.
    """

    score: Callable[[GradientBatch], torch.Tensor | list[torch.Tensor]]
    chunk: int
    features: bool = False


def run_gradient_pass(net: torch.nn.Module, loader, device, scorers: Sequence[GradientScorer], desc: str = "gradients",
                      clock: Callable[[], float] = time.perf_counter) -> tuple[list, dict]:
    """Score a split with every scorer from one clean forward pass per micro-batch.

    Returns ``(results, seconds)``: per scorer the concatenated scores (a float numpy array [N], or a
    list of them when its ``score`` returns lists), and ``{"scorers": [seconds of each scorer's own
    work (its backward and perturbed passes)], "shared": seconds of the rest (loading, the clean
    passes)}`` measured with ``clock``.
    """
    group = ScorerGroup(net, scorers, clock)
    net.eval()
    start = clock()
    for images, _ in iter_images(loader, device, desc=desc, chunk=group.graph_chunk):
        group.score(GradientBatch(net, images, group.features))
    return group.finish(), {"scorers": group.own, "shared": clock() - start - sum(group.own)}


class ScorerGroup:
    """Gradient scorers of one micro-batch size, scoring the same micro-batches: in a pass of their own
    (:func:`run_gradient_pass`) or riding a shared forward pass as its
    :class:`~openood_ext.features.GraphConsumer` (``update_graph``: the micro-batch's clean pass is the
    shared pass's, so they add only their own backward and perturbed passes). ``finish()`` returns per
    scorer its concatenated scores; ``own`` holds each scorer's seconds, measured with ``clock``."""

    taps = ()

    def __init__(self, net: torch.nn.Module, scorers: Sequence[GradientScorer],
                 clock: Callable[[], float] = time.perf_counter):
        chunks = {s.chunk for s in scorers}
        if len(chunks) != 1:
            raise ValueError(f"gradient scorers: the scorers' micro-batch sizes differ ({sorted(chunks)})")
        self.net, self.scorers, self.clock = net, list(scorers), clock
        self.graph_chunk = chunks.pop()
        self.features = any(s.features for s in scorers)
        self.parts: list[list] = [[] for _ in scorers]
        self.own = [0.0] * len(scorers)

    def score(self, batch: GradientBatch) -> None:
        """Every scorer on one micro-batch's clean pass, each one timed."""
        for i, scorer in enumerate(self.scorers):
            t = self.clock()
            self.parts[i].append(scorer.score(batch))
            self.own[i] += self.clock() - t

    def update_graph(self, x: torch.Tensor, logits: torch.Tensor, features: torch.Tensor) -> None:
        self.score(GradientBatch.of_pass(self.net, x, logits, features if self.features else None))

    def finish(self) -> list:
        return [_concat(p) for p in self.parts]


def _concat(parts: list):
    if parts and isinstance(parts[0], (list, tuple)):
        return [torch.cat(column).numpy() for column in zip(*parts)]
    return torch.cat(parts).numpy() if parts else np.zeros(0)
