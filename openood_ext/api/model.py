"""Any classifier as a toolkit network: logits, penultimate features and the classifier's weights.

The toolkit's forward pass (:func:`openood_ext.features.extract_outputs`) and its postprocessors expect
``net(x, return_feature=True) -> (logits, features)`` and ``net.get_fc_layer()``. :class:`ModelAdapter`
gives any ``nn.Module`` mapping images to logits that interface without changing the model:

* the penultimate features are the input of the last ``nn.Linear`` (a forward pre-hook, registered for
  the duration of one call), or of the module named by ``feature_layer``;
* that module is the classifier layer (its weight and bias feed ViM, ReAct, NNGuide, ...); a discovered
  last ``nn.Linear`` must produce the model's logits, else a one-line error names ``feature_layer``;
* a model returning a tuple or a dict has its logits taken when unambiguous, else ``output_key`` names them;
* networks of this toolkit (``get_fc_layer`` and ``return_feature``) run their own forward, so the
  numbers equal a command-line run's.

The adapter shares the wrapped model's submodules (same objects, same names), so layer taps
(``layers: [layer3]``) name the model's own layers, and moving or switching the adapter to eval mode
does it to the model.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError


def _unwrap(net: nn.Module) -> nn.Module:
    return net.inner if isinstance(net, ModelAdapter) else net


def is_toolkit_network(net: nn.Module) -> bool:
    """Whether ``net`` follows the toolkit's classifier contract (``get_fc_layer`` and ``return_feature``)."""
    if not callable(getattr(net, "get_fc_layer", None)):
        return False
    try:
        return "return_feature" in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


def last_linear_name(net: nn.Module) -> str | None:
    """Name of the last registered ``nn.Linear`` of ``net``, or None."""
    names = [name for name, m in net.named_modules() if name and isinstance(m, nn.Linear)]
    return names[-1] if names else None


def architecture_fingerprint(net: nn.Module) -> str:
    """A short hash of the model's class and its parameter and buffer names and shapes."""
    net = _unwrap(net)
    h = hashlib.sha256(f"{type(net).__module__}.{type(net).__qualname__}".encode())
    for name, t in list(net.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)};".encode())
    return h.hexdigest()[:16]


def weights_hash(net: nn.Module) -> str:
    """SHA-256 of the model's weights and buffers (names, dtypes, values): the cache key of its outputs."""
    h = hashlib.sha256()
    for name, t in _unwrap(net).state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


class ModelAdapter(nn.Module):
    """``net`` with the toolkit's classifier interface (see the module docstring).

    Args:
        net: any ``nn.Module`` mapping a batch of images to logits [B, C] (or a tuple/dict holding them).
        feature_layer: the module whose *input* is the penultimate feature (``"name:output"`` for its
            output); default: the last ``nn.Linear``, or the toolkit network's own features.
        output_key: the logits' key (dict output) or index (tuple output) when the model returns several.
    """

    def __init__(self, net: nn.Module, feature_layer: str | None = None, output_key: str | int | None = None):
        super().__init__()
        if isinstance(net, ModelAdapter):
            feature_layer = feature_layer if feature_layer is not None else net.feature_layer
            output_key = output_key if output_key is not None else net.output_key
            net = net.inner
        if not isinstance(net, nn.Module):
            raise ConfigError(f"expected a torch.nn.Module mapping images to logits, got {type(net).__name__}")
        object.__setattr__(self, "inner", net)  # not a submodule: its children are shared instead
        self._modules = net._modules
        self._parameters = net._parameters
        self._buffers = net._buffers
        self.training = net.training
        self.name = type(net).__name__
        self.output_key = output_key
        self.native = feature_layer is None and is_toolkit_network(net)
        modules = dict(net.named_modules())
        if isinstance(net, torch.jit.ScriptModule):
            raise ConfigError(f"{self.name} is a TorchScript module, whose layers cannot be hooked; pass the "
                              f"eager nn.Module (features are read by hooking its last linear layer)")
        if self.native:
            self.feature_layer, self.on_output = None, False
            object.__setattr__(self, "classifier", net.get_fc_layer())  # not registered: shared modules
            self._checked = True
            return
        if feature_layer is None:
            found = last_linear_name(net)
            if found is None:
                raise ConfigError(f"{self.name} has no nn.Linear layer to read penultimate features from; "
                                  f"name the feature layer: feature_layer='<module name>'")
            self.feature_layer, self.on_output, self.discovered = found, False, True
        else:
            name, _, where = str(feature_layer).partition(":")
            if where not in ("", "input", "output"):
                raise ConfigError(f"feature_layer={feature_layer!r}: expected '<module>', '<module>:input' or "
                                  f"'<module>:output'")
            if name not in modules or not name:
                raise ConfigError(f"feature_layer={feature_layer!r} is not a module of {self.name} (modules: "
                                  f"{', '.join(n for n in modules if n)[:300]})")
            self.feature_layer, self.on_output, self.discovered = name, where == "output", False
        module = modules[self.feature_layer]
        object.__setattr__(self, "classifier",
                           module if isinstance(module, nn.Linear) and not self.on_output else None)
        self._checked = False

    # ------------------------------------------------------------------ the toolkit interface
    def train(self, mode: bool = True):
        super().train(mode)
        self.inner.train(mode)
        return self

    def get_fc_layer(self) -> nn.Module:
        """The classifier layer (weight [C, D], bias [C]); ConfigError when the features come from a
        module that is not an ``nn.Linear``."""
        if self.classifier is None:
            raise ConfigError(f"feature_layer={self.feature_layer!r} of {self.name} is not an nn.Linear: the "
                              f"methods that need the classifier's weights (vim, react, nnguide, ...) cannot run")
        return self.classifier

    @property
    def has_linear_classifier(self) -> bool:
        return self.classifier is not None

    def forward(self, x: torch.Tensor, return_feature: bool = False):
        if self.native:
            return self.inner(x, return_feature=True) if return_feature else self.inner(x)
        if not return_feature and self._checked:
            return self._logits(self.inner(x), len(x))
        captured: list = []
        module = dict(self.inner.named_modules())[self.feature_layer]
        if self.on_output:
            handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        else:
            handle = module.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
        linear_out: list = []
        out_handle = (module.register_forward_hook(lambda _m, _i, out: linear_out.append(out))
                      if self.discovered and not self._checked else None)
        try:
            logits = self._logits(self.inner(x), len(x))
        finally:
            handle.remove()
            if out_handle is not None:
                out_handle.remove()
        if len(captured) != 1:
            raise ConfigError(f"{self.name}: layer {self.feature_layer!r} ran {len(captured)} times in one forward "
                              f"pass; name the feature layer: feature_layer='<module name>'")
        if out_handle is not None:
            if not (linear_out and linear_out[0].shape == logits.shape and torch.equal(linear_out[0], logits)):
                raise ConfigError(f"the last layer of {self.name} is not linear (its last nn.Linear "
                                  f"{self.feature_layer!r} does not produce the logits); name the layer whose "
                                  f"input is the penultimate feature: feature_layer='<module name>'")
        self._checked = True
        feat = captured[0]
        return (logits, feat.flatten(1)) if return_feature else logits

    def _logits(self, out: Any, batch: int) -> torch.Tensor:
        if isinstance(out, torch.Tensor):
            return out
        key = self.output_key
        if isinstance(out, Mapping):
            if key is None:
                if "logits" in out:
                    key = "logits"
                else:
                    cands = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.ndim == 2
                             and len(v) == batch]
                    key = cands[0] if len(cands) == 1 else None
            if key is None or key not in out:
                raise ConfigError(f"{self.name} returns a dict with keys {list(out)} and which holds the logits is "
                                  f"ambiguous; name it: output_key='<key>'")
            return out[key]
        if isinstance(out, (tuple, list)):
            if key is None:
                cands = [i for i, v in enumerate(out) if isinstance(v, torch.Tensor) and v.ndim == 2 and len(v) == batch]
                if len(cands) == 1:
                    key = cands[0]
            if not isinstance(key, int) or not -len(out) <= key < len(out):
                raise ConfigError(f"{self.name} returns a {type(out).__name__} of {len(out)} items and which holds the "
                                  f"logits is ambiguous; name its index: output_key=<int>")
            return out[key]
        raise ConfigError(f"{self.name} returned {type(out).__name__}, expected logits [B, C] (a tensor, or a tuple/"
                          f"dict holding them: output_key)")

    def describe(self) -> str:
        """Where the features come from, for logs and errors."""
        if self.native:
            return f"{self.name}: its own features (return_feature=True) and fc layer"
        where = "output" if self.on_output else "input"
        return f"{self.name}: features = {where} of {self.feature_layer!r}"


def adapt(net: nn.Module, feature_layer: str | None = None, output_key: str | int | None = None) -> ModelAdapter:
    """``net`` as a :class:`ModelAdapter` (returned as is when it already is one and nothing is overridden)."""
    if isinstance(net, ModelAdapter) and feature_layer is None and output_key is None:
        return net
    return ModelAdapter(net, feature_layer, output_key)


def probe(adapter: ModelAdapter, example: torch.Tensor, num_classes: int | None = None,
          what: str = "the benchmark") -> int:
    """Run one batch through the adapter (finds and checks the features and logits); returns the number of
    classes of its logits, ConfigError in one line when it differs from ``num_classes``."""
    was = adapter.training
    adapter.eval()
    try:
        with torch.no_grad():
            logits, feat = adapter(example, return_feature=True)
    finally:
        adapter.train(was)
    if logits.ndim != 2:
        raise ConfigError(f"{adapter.name} returned logits of shape {tuple(logits.shape)}, expected [B, classes]")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ConfigError(f"{adapter.name} outputs {logits.shape[1]} logits but {what} has {num_classes} classes")
    return int(logits.shape[1])
