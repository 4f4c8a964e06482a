"""Any timm model as a :class:`Classifier`: ``{name: timm, model: resnet50, pretrained: true | PATH, num_classes}``.

* ``forward(x, return_feature=True) -> (logits, features)``: features are timm's pre-logits
  (``forward_head(forward_features(x), pre_logits=True)``: the pooled 2048-d vector of a ResNet-50, the
  class token after the final norm of a ViT, the pooled tokens of a Swin), logits the classifier applied to
  them; ``get_fc_layer()`` is timm's ``get_classifier()``, which must be an ``nn.Linear`` (what the
  postprocessor zoo reads as the last linear layer: ReAct, ViM, NCI, ...).
* State-dict names are timm's own (``conv1.weight``, ``fc.weight``, ``head.weight``, ...): the model's
  children and top-level parameters are adopted as this module's, so a timm checkpoint, and a torchvision /
  OpenOOD ImageNet ResNet (same names), load with ``network.checkpoint`` unchanged.
* ``pretrained``: ``false`` (random init, never downloads); ``true``: timm's hub weights, falling back to
  ``pretrained_file`` when the hub cannot be reached; a path: that local file (timm or torchvision
  format; ``.pth``/``.bin``/``.safetensors``). When neither works: one CheckpointError naming both. A
  classifier of another size than ``num_classes`` is dropped and re-initialised (timm's rule).
* ``input_size``: inputs of another spatial size are resized (bilinear) to it first (e.g. 32x32 CIFAR
  tensors into a 224-px ViT); null: fed as they are. Other keys (``img_size``, ``drop_path_rate``,
  ``depth``, ...) go to ``timm.create_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .registry import NETWORKS
from .small_cnn import Classifier


def create_timm_model(model: str, num_classes: int, pretrained: bool | str = False,
                      pretrained_file: str | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with the weight sources described in the module docstring."""
    import timm  # lazy: importing openood_ext stays fast

    if not isinstance(model, str) or model not in timm.list_models() and not timm.is_model(model):
        raise ConfigError(f"network.model: {model!r} is not a timm model (see timm.list_models('*pattern*'))")

    def build(**extra):
        return timm.create_model(model, num_classes=num_classes, **kwargs, **extra)

    try:
        if pretrained is False or pretrained is None:
            return build(pretrained=False)
        if isinstance(pretrained, str):
            return _from_file(build, pretrained, "network.pretrained")
        if pretrained is not True:
            raise ConfigError(f"network.pretrained: expected true, false or a file path, got {pretrained!r}")
    except TypeError as exc:  # an unknown keyword for this architecture
        raise ConfigError(f"network: timm could not build {model!r}: {str(exc).splitlines()[0]}") from None
    try:
        return build(pretrained=True)
    except Exception as exc:  # noqa: BLE001  no network, no such hub weights, HF errors of every kind
        hub_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    if pretrained_file:
        return _from_file(build, pretrained_file, "network.pretrained_file", hub_error)
    raise CheckpointError(f"network.pretrained: {model} weights could not be fetched from the hub ({hub_error}) and "
                          f"no local file was given (set network.pretrained_file: PATH, or network.pretrained: PATH)")


def _from_file(build, path: str, key: str, hub_error: str | None = None) -> nn.Module:
    p = Path(path).expanduser()
    hub = f"hub weights failed ({hub_error}) and " if hub_error else ""
    if not p.is_file():
        raise CheckpointError(f"{key}: {hub}local weights {path} not found")
    try:
        return build(pretrained=True, pretrained_cfg_overlay={"file": str(p)})
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"{key}: {hub}{path} does not load into this model "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0]})"[:400]) from None


@NETWORKS.register("timm")
class TimmBackbone(Classifier):
    """A timm model with timm's own state-dict names (see the module docstring)."""

    def __init__(self, model: str = "resnet50", num_classes: int = 1000, pretrained: bool | str = False,
                 pretrained_file: str | None = None, input_size: int | None = None, **timm_kwargs: Any):
        super().__init__()
        net = create_timm_model(model, num_classes, pretrained, pretrained_file, **timm_kwargs)
        head = net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"network.model: {model}'s classifier is {type(head).__name__}, not one linear layer; "
                              f"the postprocessors need logits = W features + b")
        # Adopt timm's modules and top-level tensors: same objects, timm's names in our state dict.
        for name, child in net.named_children():
            self.add_module(name, child)
        for name, param in net.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in net.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=name not in net._non_persistent_buffers_set)
        self._timm = [net]  # a list: not registered twice
        self.model_name = model
        self.input_size = int(input_size) if input_size else None
        self.feature_dim = int(head.in_features)

    @property
    def timm_model(self) -> nn.Module:
        return self._timm[0]

    @property
    def fc(self) -> nn.Linear:  # type: ignore[override]
        return self.timm_model.get_classifier()

    def train(self, mode: bool = True):
        super().train(mode)
        self.timm_model.training = mode  # the root's own flag (its children are ours already)
        return self

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        net = self.timm_model  # top-level tensors replaced (not updated in place) must be the model's too
        for name in list(net._parameters):
            net._parameters[name] = self._parameters[name]
        for name in list(net._buffers):
            net._buffers[name] = self._buffers[name]
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        net = self.timm_model
        return net.forward_head(net.forward_features(x), pre_logits=True)
