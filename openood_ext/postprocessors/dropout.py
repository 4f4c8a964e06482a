"""MC dropout (Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016; OpenOOD v1.5's
``dropout``): the predictive distribution averaged over T stochastic forward passes."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..schema import NonNegativeInt, PositiveInt
from .base import Postprocessor
from .layer_features import iter_images
from .registry import POSTPROCESSORS

#: the module types switched to train mode (every torch dropout flavour derives from _DropoutNd)
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def dropout_layers(net: nn.Module) -> list[str]:
    """Names of ``net``'s dropout modules (any of :data:`DROPOUT_TYPES` or a subclass)."""
    return [name for name, m in net.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def no_dropout_message(net: nn.Module) -> str:
    looked = ", ".join(f"nn.{t.__name__}" for t in DROPOUT_TYPES)
    return (f"network {type(net).__name__} has no dropout layer (looked for {looked}); MC dropout needs one "
            f"(digits_cnn: +network.dropout=0.5)")


def average_prediction(logits: torch.Tensor, average: str) -> torch.Tensor:
    """[T, B, C] logits of T passes -> predictive probabilities [B, C]: the mean of the T softmaxes
    (``probs``), or the softmax of the mean logits (``logits``)."""
    if average == "probs":
        return logits.double().softmax(dim=2).mean(dim=0)
    return logits.double().mean(dim=0).softmax(dim=1)


def max_probability_scores(predictive, loader, device, desc: str, chunk: int | None = None):
    """(conf float64 [N], preds int64 [N]) over a split: the largest predictive probability of each image
    and its class, ``predictive(images) -> [B, C]`` applied batch by batch (``chunk``: at most that many
    images per call)."""
    confs, preds = [], []
    for images, _ in iter_images(loader, device, desc=desc, chunk=chunk):
        conf, pred = predictive(images).max(dim=1)
        confs.append(conf.cpu())
        preds.append(pred.cpu())
    if not confs:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return torch.cat(confs).numpy(), torch.cat(preds).numpy()


class stochastic_dropout:
    """Context: ``net``'s dropout modules in train mode (the rest, BatchNorm included, as they were)."""

    def __init__(self, net: nn.Module):
        self.modules = [m for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]

    def __enter__(self):
        self.was = [m.training for m in self.modules]
        for m in self.modules:
            m.train()
        return self

    def __exit__(self, *exc):
        for m, was in zip(self.modules, self.was):
            m.train(was)


@POSTPROCESSORS.register("dropout", aliases=["mc_dropout"])
class MCDropoutPostprocessor(Postprocessor):
    """MC dropout: conf = max_c (1/T) sum_t softmax(f_t(x))_c, f_t the network with fresh dropout masks; higher = more ID.

    The network's own dropout layers run in train mode, everything else (BatchNorm) in eval mode. The T
    passes are one batched pass over the batch repeated T times (``batch_size`` images per pass in all).

    Args:
        T: number of stochastic passes (OpenOOD's ``dropout_times``, default 5).
        average: ``probs`` (default): mean of the T softmax outputs, the paper's predictive distribution;
            ``logits``: softmax of the mean logits, as OpenOOD's code.
        seed: seed of the dropout masks (scores are reproducible; the global RNG is left untouched).
        batch_size: images per batched pass, T copies counted (bounds memory; not a hyperparameter).
    Predictions are the argmax of the averaged distribution. Needs the network, with at least one dropout
    layer (checked before the run).
    """

    needs_network = True

    def __init__(self, T: PositiveInt = 5, average: Literal["probs", "logits"] = "probs",
                 seed: NonNegativeInt = 0, batch_size: PositiveInt = 1024):
        self.T, self.average, self.seed = int(T), average, int(seed)
        self._batch_size = int(batch_size)
        self.net = self.device = None

    @property
    def passes_per_sample(self) -> int:
        """Network passes per scored sample (the bench counts this method against T plain passes)."""
        return self.T

    @staticmethod
    def check_network(spec: dict, net: nn.Module, network_spec: dict) -> None:
        """Before the run: the configured network must have a dropout layer."""
        if not dropout_layers(net):
            raise ValueError(no_dropout_message(net))

    def attach_network(self, net, device, loaders=None):
        if not dropout_layers(net):
            raise ConfigError(f"postprocessor 'dropout': {no_dropout_message(net)}")
        super().attach_network(net, device, loaders)

    def predictive(self, images: torch.Tensor) -> torch.Tensor:
        """Predictive probabilities [B, C] (float64) of one batch, from T batched stochastic passes."""
        with torch.no_grad(), stochastic_dropout(self.net):
            logits = self.net(images.repeat(self.T, *([1] * (images.ndim - 1))))
        return average_prediction(logits.view(self.T, len(images), -1), self.average)

    def score_loader(self, loader) -> tuple[np.ndarray, np.ndarray]:
        if self.net is None:
            raise RuntimeError("dropout: attach_network() must be called before scoring")
        self.net.eval()
        device = torch.device(self.device)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            return max_probability_scores(self.predictive, loader, self.device, "dropout",
                                          chunk=max(1, self._batch_size // self.T))
