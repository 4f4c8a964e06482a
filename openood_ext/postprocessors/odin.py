"""ODIN (Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018): temperature scaling plus input preprocessing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..schema import NonNegativeFloat, PositiveFloat, PositiveInt
from ..utils.runtime import get_logger
from .base import Postprocessor
from .layer_features import GRAD_BATCH_SIZE, input_std, iter_images, signed_input_step
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("odin")
class ODINPostprocessor(Postprocessor):
    """ODIN: conf = max_c softmax(f(x~) / T)_c, x~ = x - eps * sign(-grad_x log S_yhat(x; T)) / std; higher = more ID.

    Args:
        temperature: T (OpenOOD default 1000).
        noise: eps, the perturbation magnitude in pixel units (OpenOOD default 0.0014).
        input_std: per-channel std of the input normalisation, to turn the pixel step into the
            network's input space; default: read from the loader's ``Normalize`` transform, else 1.
        grad_batch_size: samples per forward-backward pass (bounds memory; not a hyperparameter:
            scores do not depend on it beyond float rounding).
    Needs the network (input gradients); scores whole splits with ``score_loader``.
    """

    needs_network = True

    def __init__(self, temperature: PositiveFloat = 1000.0, noise: NonNegativeFloat = 0.0014, input_std=None,
                 grad_batch_size: PositiveInt = GRAD_BATCH_SIZE):
        if temperature <= 0:
            raise ValueError(f"odin: temperature must be > 0, got {temperature}")
        if noise < 0:
            raise ValueError(f"odin: noise must be >= 0, got {noise}")
        self.temperature, self.noise = float(temperature), float(noise)
        self.input_std = input_std
        self._grad_batch_size = int(grad_batch_size)
        self.net = self.device = None

    def grid_batch(self, images: torch.Tensor, std: torch.Tensor, settings) -> list[torch.Tensor]:
        """ODIN confidences of one batch for every ``(temperature, noise)`` in ``settings``, float64 [B] each.

        One forward pass with gradients, one backward per distinct temperature (the step's sign depends
        on T, not on the noise magnitude) and one forward pass per setting over the perturbed batch.
        """
        x = images.detach().clone().requires_grad_(True)
        logits = self.net(x)
        target = logits.detach().argmax(dim=1)
        temps = list(dict.fromkeys(float(t) for t, _ in settings))
        grads = {}
        for i, t in enumerate(temps):
            loss = F.cross_entropy(logits / t, target)
            (grads[t],) = torch.autograd.grad(loss, x, retain_graph=i + 1 < len(temps))
        out = []
        with torch.no_grad():
            for t, eps in settings:
                perturbed = self.perturb(x, grads[float(t)], std, float(eps))
                out.append((self.net(perturbed).double() / float(t)).softmax(dim=1).max(dim=1).values.cpu())
        return out

    def perturb(self, images: torch.Tensor, grad: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
        """The input step: ``x - eps * sign(grad) / std`` on every input element (ODIN); variants that
        perturb other elements (iODIN) override only this."""
        return signed_input_step(images, grad, std, eps)

    def score_batch(self, images: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """ODIN confidences of one batch (on the attached network), float64 [B]."""
        return self.grid_batch(images, std, [(self.temperature, self.noise)])[0]

    def grid_scores(self, loader, settings) -> list[np.ndarray]:
        """Confidences of a whole split for every ``(temperature, noise)`` setting (APS over ODIN's
        grid re-uses the clean pass and each temperature's gradient across noise magnitudes)."""
        if self.net is None:
            raise RuntimeError(f"{self.name}: attach_network() must be called before scoring")
        self.net.eval()
        std, confs = None, [[] for _ in settings]
        for images, _ in iter_images(loader, self.device, desc=self.name, chunk=self._grad_batch_size):
            if std is None:
                std = input_std(loader, images.shape[1], self.input_std)
                get_logger().debug("%s: input std %s", self.name, std.tolist())
            for store, conf in zip(confs, self.grid_batch(images, std, settings)):
                store.append(conf)
        return [torch.cat(c).numpy() if c else np.zeros(0) for c in confs]

    def score_loader(self, loader) -> np.ndarray:
        return self.grid_scores(loader, [(self.temperature, self.noise)])[0]

    #: APS: the grid parameters :meth:`grid_scores` evaluates together
    grid_params = ("temperature", "noise")

    def aps_scores(self, combos: list[dict], loaders: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ID-val, OOD-val) confidences per grid combination, all from one pass set per split."""
        settings = [(c.get("temperature", self.temperature), c.get("noise", self.noise)) for c in combos]
        id_val, ood_val = self.grid_scores(loaders["id_val"], settings), self.grid_scores(loaders["ood_val"], settings)
        return list(zip(id_val, ood_val))
