"""The postprocessor contract.

A postprocessor turns network outputs into a confidence score per sample::

    pp = POSTPROCESSORS.build({"name": "knn", "k": 50})
    pp.fit(train_outputs)            # ID training outputs (NetOutputs); ignored by methods with nothing to fit
    conf = pp.score(test_outputs)    # numpy float array [N]; higher = more in-distribution

Methods that need more than cached outputs (input perturbation, gradients, other layers) set
``needs_network = True``; the pipeline then calls ``attach_network(net, device)`` before ``fit``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..features import NetOutputs


class Postprocessor:
    """Base class: no fitting, ``score`` must be overridden."""

    #: True when scoring needs the network itself (the pipeline passes it via attach_network).
    needs_network: bool = False

    def fit(self, train_outputs: NetOutputs | None = None, **_) -> "Postprocessor":
        """Fit on ID training outputs. The default has nothing to fit and ignores its input."""
        return self

    def score(self, outputs: NetOutputs) -> np.ndarray:
        """Confidence per sample, float64 [N], higher = more in-distribution."""
        raise NotImplementedError

    def predict(self, outputs: NetOutputs) -> np.ndarray:
        """Predicted class per sample (argmax of the logits), int64 [N]."""
        return outputs.preds.cpu().numpy()

    def attach_network(self, net: torch.nn.Module, device: torch.device) -> None:
        self.net, self.device = net, device

    @property
    def name(self) -> str:
        return getattr(type(self), "_registry_name", type(self).__name__)

    def hyperparameters(self) -> dict:
        """The constructor arguments that define this instance (recorded in metrics.json)."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}


def as_numpy(conf: torch.Tensor) -> np.ndarray:
    return conf.detach().cpu().double().numpy()
