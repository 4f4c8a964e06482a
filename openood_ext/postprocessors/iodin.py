"""iODIN (Regmi et al., ASCOOD, 2025; OpenOOD v1.5's ``iodin``): ODIN whose input step moves one input
element only, the one where the loss is most sensitive."""

from __future__ import annotations

import torch

from .layer_features import signed_input_step
from .odin import ODINPostprocessor
from .registry import POSTPROCESSORS


def most_sensitive_element(grad: torch.Tensor) -> torch.Tensor:
    """Mask [B, *] with a single 1 per sample, at the largest ``|grad|`` over all channels and positions
    (the first one on ties, as ``argmax``)."""
    flat = grad.abs().reshape(len(grad), -1)
    mask = torch.zeros_like(flat)
    mask.scatter_(1, flat.argmax(dim=1, keepdim=True), 1.0)
    return mask.view_as(grad)


@POSTPROCESSORS.register("iodin")
class IODINPostprocessor(ODINPostprocessor):
    """iODIN: ODIN (conf = max_c softmax(f(x~) / T)_c) with x~ = x - eps * m * sign(grad_x) / std, where m
    keeps the single element of largest ``|grad_x|`` per sample; higher = more ID.

    ``grad_x`` is the gradient of the temperature-scaled cross-entropy at the predicted class, as in ODIN;
    arguments, APS over ``(temperature, noise)`` and the batched gradient pass are ODIN's.
    """

    def perturb(self, images: torch.Tensor, grad: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
        stepped = signed_input_step(images, grad, std, eps)
        return torch.where(most_sensitive_element(grad).bool(), stepped, images.detach())
