"""ODIN (Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018): temperature scaling plus input preprocessing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..schema import NonNegativeFloat, PositiveFloat
from ..utils.runtime import get_logger
from .base import Postprocessor
from .layer_features import input_std, iter_images, signed_input_step
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("odin")
class ODINPostprocessor(Postprocessor):
    """ODIN: conf = max_c softmax(f(x~) / T)_c, x~ = x - eps * sign(-grad_x log S_yhat(x; T)) / std; higher = more ID.

    Args:
        temperature: T (OpenOOD default 1000).
        noise: eps, the perturbation magnitude in pixel units (OpenOOD default 0.0014).
        input_std: per-channel std of the input normalisation, to turn the pixel step into the
            network's input space; default: read from the loader's ``Normalize`` transform, else 1.
    Needs the network (input gradients); scores whole splits with ``score_loader``.
    """

    needs_network = True

    def __init__(self, temperature: PositiveFloat = 1000.0, noise: NonNegativeFloat = 0.0014, input_std=None):
        if temperature <= 0:
            raise ValueError(f"odin: temperature must be > 0, got {temperature}")
        if noise < 0:
            raise ValueError(f"odin: noise must be >= 0, got {noise}")
        self.temperature, self.noise = float(temperature), float(noise)
        self.input_std = input_std
        self.net = self.device = None

    def score_batch(self, images: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """ODIN confidences of one batch (on the attached network), float64 [B]."""
        x = images.detach().clone().requires_grad_(True)
        logits = self.net(x)
        loss = F.cross_entropy(logits / self.temperature, logits.detach().argmax(dim=1))
        (grad,) = torch.autograd.grad(loss, x)
        perturbed = signed_input_step(x, grad, std, self.noise)
        with torch.no_grad():
            out = self.net(perturbed).double() / self.temperature
        return out.softmax(dim=1).max(dim=1).values.cpu()

    def score_loader(self, loader) -> np.ndarray:
        if self.net is None:
            raise RuntimeError("odin: attach_network() must be called before scoring")
        self.net.eval()
        std, confs = None, []
        for images, _ in iter_images(loader, self.device, desc="odin"):
            if std is None:
                std = input_std(loader, images.shape[1], self.input_std)
                get_logger().debug("odin: input std %s", std.tolist())
            confs.append(self.score_batch(images, std))
        return torch.cat(confs).numpy() if confs else np.zeros(0)
