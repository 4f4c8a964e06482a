"""Network-side helpers for postprocessors that re-run the network (``needs_network = True``).

* :class:`LayerTaps` reads intermediate outputs of any ``nn.Module`` through forward hooks, so a method
  works with every registered network without a ``return_feature_list`` API;
* :func:`resolve_layers` turns a layer spec from config into module names:

  - ``"stages"`` (alias ``"auto"``): the last module of every run of equal-shaped 4-D outputs in
    execution order, i.e. the output of each resolution/width stage (ResNet-18: ``layer1`` ..
    ``layer4``, ``avgpool``; DigitsCNN: the ReLUs, the max-pool and the global pool);
  - ``"conv_relu"``: every ``nn.Conv2d`` and ``nn.ReLU`` module, the layers OpenOOD's Gram hooks;
  - ``"stem"`` (also usable inside a list): the stem output, OpenOOD's ``feature_list[0]``: on networks
    with a top-level ``layer1`` (the ResNets) the input of ``layer1``, i.e. relu(bn1(conv1(x))), tapped
    as ``"layer1:input"``; elsewhere the first detected stage (DigitsCNN: the first ReLU);
  - ``"<module>:input"``: the first input of a module rather than its output;
  - a list of module names (``["layer1", "layer3"]``) or of indices into the ``"stages"`` list;

* :func:`input_std` reads the per-channel normalisation std from a loader's transform (for input
  perturbation in pixel units, as ODIN and Mahalanobis do);
* :func:`iter_images` iterates ``(images, labels)`` over the pipeline's ``(images, labels, n_skipped)``
  batches.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..utils.runtime import progress

#: samples per forward-backward pass of the input-gradient methods (ODIN, MDSEns): the backward keeps
#: every activation of the pass, so this bounds their memory (CIFAR-10 ResNet-18 width 64: ~7 MB per
#: image); on CPU 64 was also faster than 256. Scores are per sample, so chunking does not change them.
GRAD_BATCH_SIZE = 64


def iter_images(loader, device: torch.device | str, desc: str = "batches", chunk: int | None = None):
    """Yield ``(images on device, labels)`` for each non-empty batch of ``loader``, split into pieces of
    at most ``chunk`` samples when given."""
    for batch in progress(loader, desc=desc):
        images, labels = batch[0], torch.as_tensor(batch[1]).long()
        if len(images) == 0:
            continue
        if chunk is None or len(images) <= chunk:
            yield images.to(device), labels
            continue
        for part, part_labels in zip(images.split(chunk), labels.split(chunk)):
            yield part.to(device), part_labels


class LayerTaps:
    """Forward hooks on named modules; each firing's output is passed through ``transform`` and kept.

    Use as a context manager around forward passes::

        with LayerTaps(net, ["layer1", "layer2"], transform=lambda t: t.mean((2, 3))) as taps:
            logits = net(x)
            feats = taps.pop()     # list of transformed outputs, in firing order

    ``transform`` runs inside the hook, i.e. before a later in-place operation (``ReLU(inplace=True)``)
    can modify the tensor. With ``clone=True`` the raw output is copied first (use it when gradients
    flow through the kept tensors).

    :meth:`run` is a forward pass that stops as soon as every tapped layer has fired: when only early
    layers are needed (Mahalanobis on the stem), the rest of the network is never computed.
    """

    def __init__(self, net: nn.Module, names: Sequence[str],
                 transform: Callable[[torch.Tensor], object] | None = None, clone: bool = False):
        from ..features import split_tap_layer
        modules = dict(net.named_modules())
        parsed = [split_tap_layer(n) for n in names]
        missing = [n for n, (m, _) in zip(names, parsed) if m not in modules]
        if missing:
            raise ValueError(f"layer(s) {missing} not found in {type(net).__name__}; "
                             f"modules are: {', '.join(n for n in modules if n)[:500]}")
        self.net, self.names = net, list(names)
        self._modules = [(modules[m], on_input) for m, on_input in parsed]
        self.transform, self.clone = transform, clone
        self._handles: list = []
        self._kept: list = []
        self._stop_when_all_fired = False

    def _hook(self, _module, _inputs, output):
        if isinstance(output, (tuple, list)):
            output = output[0]
        if self.clone:
            output = output.clone()
        self._kept.append(self.transform(output) if self.transform else output)
        if self._stop_when_all_fired and len(self._kept) >= len(self._modules):
            raise _AllLayersTapped

    def run(self, x: torch.Tensor) -> list:
        """Forward ``x`` until every tapped layer has fired once; the kept outputs in firing order.

        The network's later layers are skipped (gradients through the kept outputs still reach ``x``).
        """
        self.pop()
        self._stop_when_all_fired = True
        try:
            self.net(x)
        except _AllLayersTapped:
            pass
        finally:
            self._stop_when_all_fired = False
        return self.pop()

    def __enter__(self) -> "LayerTaps":
        self._handles = [m.register_forward_pre_hook(lambda mod, inputs: self._hook(mod, None, inputs))
                         if on_input else m.register_forward_hook(self._hook) for m, on_input in self._modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._kept = [], []

    def pop(self) -> list:
        """The kept outputs since the last ``pop`` (in firing order), and forget them."""
        kept, self._kept = self._kept, []
        return kept


class _AllLayersTapped(Exception):
    """Raised inside a hook to end a forward pass early (:meth:`LayerTaps.run`)."""


def _firing_order(net: nn.Module, example: torch.Tensor) -> list[tuple[str, tuple]]:
    """(name, output shape without batch) of every module, in the order their forward calls finish."""
    fired: list[tuple[str, tuple]] = []
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor):
                fired.append((name, tuple(out.shape[1:])))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(example)
    finally:
        for h in handles:
            h.remove()
    return fired


def stage_layers(net: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules ending each run of equal-shaped 4-D outputs (see the module docstring).

    Modules that fire more than once per forward pass (a shared activation module) are ignored.
    """
    was_training = net.training
    net.eval()
    try:
        fired = _firing_order(net, example[:1])
    finally:
        net.train(was_training)
    counts: dict[str, int] = {}
    for name, _ in fired:
        counts[name] = counts.get(name, 0) + 1
    fired = [(n, s) for n, s in fired if counts[n] == 1 and len(s) == 3]
    stages = [name for i, (name, shape) in enumerate(fired)
              if i + 1 == len(fired) or fired[i + 1][1] != shape]
    if not stages:
        raise ValueError(f"{type(net).__name__}: no module produces a 4-D feature map; "
                         f"name the layers explicitly (layers: [module.name, ...])")
    return stages


def conv_relu_layers(net: nn.Module) -> list[str]:
    """Every ``nn.Conv2d`` / ``nn.ReLU`` module name, in registration order (OpenOOD's Gram choice)."""
    names = [n for n, m in net.named_modules() if n and isinstance(m, (nn.Conv2d, nn.ReLU))]
    if not names:
        raise ValueError(f"{type(net).__name__} has no Conv2d or ReLU module; name the layers explicitly")
    return names


def stem_layer(net: nn.Module, example: torch.Tensor) -> str:
    """The stem output's tap name (see the module docstring)."""
    if "layer1" in dict(net.named_children()):
        return "layer1:input"
    return stage_layers(net, example)[0]


def resolve_layers(net: nn.Module, spec, example: torch.Tensor) -> list[str]:
    """Tap names for a layer spec (``stages``/``auto``, ``conv_relu``, ``stem``, names, or stage indices)."""
    if isinstance(spec, str):
        if spec in ("stages", "auto"):
            return stage_layers(net, example)
        if spec == "conv_relu":
            return conv_relu_layers(net)
        spec = [spec]
    spec = [stem_layer(net, example) if s == "stem" else s for s in spec]
    if not spec:
        raise ValueError("layers: empty list")
    if all(isinstance(s, int) for s in spec):
        stages = stage_layers(net, example)
        bad = [i for i in spec if not -len(stages) <= i < len(stages)]
        if bad:
            raise ValueError(f"layers: indices {bad} out of range for the {len(stages)} stages {stages}")
        return [stages[i] for i in spec]
    if any(isinstance(s, int) for s in spec):  # mixed names and indices
        stages = stage_layers(net, example)
        spec = [stages[s] if isinstance(s, int) and -len(stages) <= s < len(stages) else s for s in spec]
    if not all(isinstance(s, str) for s in spec):
        raise ValueError(f"layers: expected 'stages', 'conv_relu', 'stem', module names or stage indices, got {spec}")
    from ..features import split_tap_layer
    modules = dict(net.named_modules())
    missing = [s for s in spec if split_tap_layer(s)[0] not in modules]
    if missing:
        raise ValueError(f"layers: {missing} not found in {type(net).__name__}")
    return spec


def first_batch(loader) -> torch.Tensor:
    """Images of the first non-empty batch (for probing layer shapes)."""
    for batch in loader:
        if len(batch[0]):
            return batch[0]
    raise ValueError("loader yielded no images")


def _find_normalize(transform) -> object | None:
    if transform is None:
        return None
    if hasattr(transform, "std") and type(transform).__name__ == "Normalize":
        return transform
    for inner in getattr(transform, "transforms", []) or []:
        found = _find_normalize(inner)
        if found is not None:
            return found
    return None


def input_std(loader, channels: int, given: float | Iterable[float] | None = None) -> torch.Tensor:
    """Per-channel std [channels] used to normalise the inputs.

    ``given`` (a number or list) wins; otherwise the ``Normalize`` step of the loader's dataset
    transform is used; otherwise 1 (perturbation directly in the network's input space).
    """
    if given is not None:
        std = torch.as_tensor(given, dtype=torch.float32).flatten()
    else:
        dataset = getattr(loader, "dataset", None)
        while dataset is not None and not hasattr(dataset, "transform") and hasattr(dataset, "dataset"):
            dataset = dataset.dataset  # torch Subset and similar wrappers
        norm = _find_normalize(getattr(dataset, "transform", None))
        std = (torch.as_tensor(norm.std, dtype=torch.float32).flatten() if norm is not None
               else torch.ones(1))
    if len(std) == 1:
        std = std.expand(channels)
    if len(std) != channels:
        raise ValueError(f"input std has {len(std)} values for {channels} input channels")
    return std.clone()


def signed_input_step(images: torch.Tensor, grad: torch.Tensor, std: torch.Tensor,
                      magnitude: float) -> torch.Tensor:
    """``x - magnitude * sign(grad) / std`` with sign(0) = +1, the ODIN / Mahalanobis input step."""
    step = (grad >= 0).to(images.dtype) * 2.0 - 1.0
    step = step / std.to(images.device, images.dtype).view(1, -1, *([1] * (images.ndim - 2)))
    return images.detach() - magnitude * step
