"""Small NetOutputs builders shared by the per-method zoo tests."""

from __future__ import annotations

import numpy as np
import torch

from openood_ext.features import NetOutputs
from openood_ext.postprocessors import POSTPROCESSORS


def outputs(features=None, w=None, b=None, labels=None, logits=None) -> NetOutputs:
    """NetOutputs of given features and/or logits (float32, as the pass stores them): logits default to
    W z + b when W is given (else zeros [N, 2]), features to zeros [N, 1]."""
    if features is None:
        features = np.zeros((len(logits), 1))
    z = torch.as_tensor(np.asarray(features, dtype=np.float64))
    extras = {}
    if w is not None:
        w = torch.as_tensor(np.asarray(w, dtype=np.float64))
        b = torch.zeros(len(w), dtype=torch.float64) if b is None else torch.as_tensor(np.asarray(b, dtype=np.float64))
        extras = {"fc_weight": w.float(), "fc_bias": b.float()}
        if logits is None:
            logits = z @ w.T + b
    if logits is None:
        logits = torch.zeros(len(z), 2)
    lab = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    return NetOutputs(torch.as_tensor(np.asarray(logits, dtype=np.float64)).float(), z.float(), lab, extras)


def build(name, **kw):
    return POSTPROCESSORS.build({"name": name, **kw})


def logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]
