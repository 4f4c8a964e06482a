"""ODIN (Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018): temperature scaling plus input preprocessing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..schema import NonNegativeFloat, PositiveFloat, PositiveInt
from ..utils.runtime import get_logger
from .base import Postprocessor
from .input_gradients import GradientBatch, GradientScorer, run_gradient_pass
from .layer_features import GRAD_BATCH_SIZE, input_std, signed_input_step
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

    def grid_batch(self, batch: GradientBatch, std: torch.Tensor, settings) -> list[torch.Tensor]:
        """ODIN confidences of one micro-batch for every ``(temperature, noise)`` in ``settings``, float64 [B]
        each, from its clean pass with gradients (``batch``, possibly shared with other methods).

        One backward per distinct temperature (the step's sign depends on T, not on the noise magnitude;
        memoised in ``batch``, so iODIN at the same T reuses ODIN's) and one forward pass per setting
        over the perturbed batch.
        """
        target = batch.logits.detach().argmax(dim=1)
        out = []
        for t, eps in settings:
            t = float(t)
            grad = batch.input_grad(("odin_tempered_nll", t), lambda b, t=t: F.cross_entropy(b.logits / t, target))
            with torch.no_grad():
                perturbed = self.perturb(batch.x, grad, std, float(eps))
                out.append((self.net(perturbed).double() / t).softmax(dim=1).max(dim=1).values.cpu())
        return out

    def perturb(self, images: torch.Tensor, grad: torch.Tensor, std: torch.Tensor, eps: float) -> torch.Tensor:
        """The input step: ``x - eps * sign(grad) / std`` on every input element (ODIN); variants that
        perturb other elements (iODIN) override only this."""
        return signed_input_step(images, grad, std, eps)

    def gradient_scorer(self, loader, settings=None) -> GradientScorer:
        """This method's part of a shared gradient pass over ``loader`` (see :mod:`.input_gradients`): per
        micro-batch the confidences [B] at its own setting, or a list of them, one per ``(temperature,
        noise)`` in ``settings``."""
        if self.net is None:
            raise RuntimeError(f"{self.name}: attach_network() must be called before scoring")
        grid = [(self.temperature, self.noise)] if settings is None else list(settings)
        std = []

        def score(batch: GradientBatch):
            if not std:
                std.append(input_std(loader, batch.x.shape[1], self.input_std))
                get_logger().debug("%s: input std %s", self.name, std[0].tolist())
            confs = self.grid_batch(batch, std[0], grid)
            return confs[0] if settings is None else confs

        return GradientScorer(score, self._grad_batch_size)

    def grid_scores(self, loader, settings) -> list[np.ndarray]:
        """Confidences of a whole split for every ``(temperature, noise)`` setting (APS over ODIN's
        grid re-uses the clean pass and each temperature's gradient across noise magnitudes)."""
        scorer = self.gradient_scorer(loader, settings)
        (confs,), _ = run_gradient_pass(self.net, loader, self.device, [scorer], desc=self.name)
        return confs if isinstance(confs, list) else [confs] * len(settings)  # an empty split: zeros(0) each

    def score_loader(self, loader) -> np.ndarray:
        return self.grid_scores(loader, [(self.temperature, self.noise)])[0]

    #: APS: the grid parameters :meth:`grid_scores` evaluates together
    grid_params = ("temperature", "noise")

    def aps_scores(self, combos: list[dict], loaders: dict) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ID-val, OOD-val) confidences per grid combination, all from one pass set per split."""
        settings = [(c.get("temperature", self.temperature), c.get("noise", self.noise)) for c in combos]
        id_val, ood_val = self.grid_scores(loaders["id_val"], settings), self.grid_scores(loaders["ood_val"], settings)
        return list(zip(id_val, ood_val))
