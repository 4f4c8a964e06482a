"""The postprocessor contract.

A postprocessor turns network outputs into a confidence score per sample::

    pp = POSTPROCESSORS.build({"name": "knn", "k": 50})
    pp.fit(train_outputs)            # ID training outputs (NetOutputs); ignored by methods with nothing to fit
    conf = pp.score(test_outputs)    # numpy float array [N]; higher = more in-distribution

``fit`` may also receive ``val_outputs`` (ID validation outputs) for methods that tune on them
(temperature scaling, KL matching).

Methods that need more than cached outputs (input perturbation, gradients, intermediate layers) set
``needs_network = True``. The pipeline then calls ``attach_network(net, device, loaders)`` before
``fit``, where ``loaders(split_name)`` returns a DataLoader over ``"id_train"`` or ``"id_val"`` yielding
``(images, labels, n_skipped)`` batches, and scores each split with ``score_loader(loader)`` instead of
``score(outputs)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..features import NetOutputs


class Postprocessor:
    """Base class: no fitting, ``score`` must be overridden."""

    #: True when scoring needs the network itself (see the module docstring).
    needs_network: bool = False

    def fit(self, train_outputs: NetOutputs | None = None, val_outputs: NetOutputs | None = None,
            **_) -> "Postprocessor":
        """Fit on ID training (and validation) outputs. The default has nothing to fit."""
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        """Confidence per sample, float64 [N], higher = more in-distribution."""
        raise NotImplementedError

    def score_loader(self, loader) -> np.ndarray:
        """Confidence per sample of a whole split, for ``needs_network`` methods."""
        raise NotImplementedError(f"{self.name} does not score from images")

    def predict(self, outputs: NetOutputs) -> np.ndarray:
        """Predicted class per sample (argmax of the logits), int64 [N]."""
        return outputs.preds.cpu().numpy()

    def attach_network(self, net: torch.nn.Module, device: torch.device,
                       loaders: Callable[[str], object] | None = None) -> None:
        self.net, self.device, self.loaders = net, device, loaders

    @property
    def name(self) -> str:
        return getattr(type(self), "_registry_name", type(self).__name__)

    def hyperparameters(self) -> dict:
        """The public scalar attributes that define this instance (recorded in metrics.json)."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}


def as_numpy(conf: torch.Tensor) -> np.ndarray:
    return conf.detach().cpu().double().numpy()
