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

Methods that need intermediate layers but no gradient (Gram; MDSEns's fit) read them from the shared
forward pass instead (layer taps, see :mod:`openood_ext.features`): ``fit_taps(net, example)`` returns a
consumer that fits the method from the id_train pass, ``score_taps()`` one whose ``finish()`` is a split's
confidences; ``uses_taps = True`` says the method scores that way. ``needs_network`` is then left for
what needs input gradients or perturbed inputs (ODIN, MDSEns's scoring). A score consumer's ``finish()``
returns conf float64 [N], or ``(conf [N], preds [N])`` from a method that predicts classes its own way
(VMDLS); then ``predict`` is not called for that split. ``score_loader`` may return such a pair too (MC
dropout and ensembles predict the argmax of their averaged distribution).

Callers do not choose among these paths themselves: :class:`openood_ext.postprocessors.schedule.Scheduler`
routes every postprocessor (cached outputs, shared layer taps, or the network) and returns its scores.

Plugins need no base class (duck typing): a class with ``score`` (and optionally ``fit``) is enough.
:func:`as_postprocessor` gives such an object the optional parts of the contract with their defaults
(``fit`` that does nothing, ``needs_network = False``, ``predict`` = argmax of the logits,
``hyperparameters()`` = its public scalar and list-of-scalar attributes, ``name`` = its registry name). The registry rejects
a class without ``score`` when it is built.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np
import torch

from ..features import NetOutputs


class Postprocessor:
    """Base class: no fitting, ``score`` must be overridden."""

    #: True when scoring needs the network itself (see the module docstring).
    needs_network: bool = False
    #: True when the method scores from the shared pass's layer taps (``score_taps``).
    uses_taps: bool = False

    def fit_taps(self, net: torch.nn.Module, example: torch.Tensor):
        """A tap consumer fitting this method from the id_train forward pass, or None (nothing to tap)."""

    def score_taps(self):
        """A tap consumer whose ``finish()`` returns a split's confidences, or None."""

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
        """The public attributes that define this instance, scalars and lists of scalars (Gram's powers,
        MDSEns's fitted layer weights); recorded in metrics.json."""
        return public_settings(self)


_SCALARS = (int, float, str, bool, type(None))


def public_settings(obj: Any) -> dict:
    """``obj``'s public attributes that are scalars or lists/tuples of scalars (lists as lists)."""
    out = {}
    for k, v in vars(obj).items():
        if k.startswith("_"):
            continue
        if isinstance(v, _SCALARS):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, _SCALARS) for x in v):
            out[k] = list(v)
    return out


def as_numpy(conf: torch.Tensor) -> np.ndarray:
    return conf.detach().cpu().double().numpy()


#: What every postprocessor class must have; the rest of the contract has defaults.
REQUIRED_METHODS = ("score",)


def as_postprocessor(obj: Any) -> Postprocessor:
    """``obj`` itself when it derives from :class:`Postprocessor`, else an adapter supplying the defaults."""
    if isinstance(obj, Postprocessor):
        return obj
    if not callable(getattr(obj, "score", None)):
        from ..errors import RegistryError
        raise RegistryError(f"postprocessor {type(obj).__qualname__} lacks score(), which every "
                            f"postprocessor must have")
    return DuckPostprocessor(obj)


class DuckPostprocessor(Postprocessor):
    """Wraps a plugin object that has ``score`` (and maybe some of the rest) in the full contract.

    Calls go to the plugin's own method when it has one, else to the :class:`Postprocessor` default;
    ``fit`` receives ``val_outputs`` only when the plugin's ``fit`` accepts it.
    """

    def __init__(self, inner: Any):
        self._inner = inner
        self.needs_network = bool(getattr(inner, "needs_network", False))
        self.uses_taps = bool(getattr(inner, "uses_taps", False))

    @property
    def name(self) -> str:
        return getattr(type(self._inner), "_registry_name", type(self._inner).__name__)

    def fit(self, train_outputs=None, val_outputs=None, **kwargs):
        fit = getattr(self._inner, "fit", None)
        if callable(fit):
            try:
                params = inspect.signature(fit).parameters
            except (TypeError, ValueError):
                params = {}
            takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
            extra = {k: v for k, v in {"val_outputs": val_outputs, **kwargs}.items()
                     if takes_any or k in params}
            fit(train_outputs, **extra)
        return self

    def score(self, outputs):
        return self._inner.score(outputs)

    def fit_taps(self, net, example):
        method = getattr(self._inner, "fit_taps", None)
        return method(net, example) if callable(method) else None

    def score_taps(self):
        method = getattr(self._inner, "score_taps", None)
        return method() if callable(method) else None

    def score_loader(self, loader):
        method = getattr(self._inner, "score_loader", None)
        return method(loader) if callable(method) else super().score_loader(loader)

    def predict(self, outputs):
        method = getattr(self._inner, "predict", None)
        return method(outputs) if callable(method) else super().predict(outputs)

    def attach_network(self, net, device, loaders=None):
        method = getattr(self._inner, "attach_network", None)
        if callable(method):
            method(net, device, loaders)
        else:
            self._inner.net, self._inner.device, self._inner.loaders = net, device, loaders

    def hyperparameters(self) -> dict:
        method = getattr(self._inner, "hyperparameters", None)
        if callable(method):
            return dict(method())
        return public_settings(self._inner)
