"""CLUB: a contrastive log-ratio upper bound of mutual information (Cheng et al., ICML 2020; code
``Linear95/CLUB`` ``mi_estimators.py``; OAML's ``openood/losses/mi_loss.py`` is a copy).

A variational conditional q(y | x) = N(mu(x), diag exp(lv(x))), lv = tanh(.) (so the variance lies in
[e^-1, e]), gives the sampled bound (:meth:`CLUB.bound`)

    I_vCLUB = (1/N) sum_i [ log q(y_i | x_i) - (1/N) sum_j log q(y_j | x_i) ]
            = (1/N) sum_i sum_d [ -(mu_id - y_id)^2 + mean_j (y_jd - mu_id)^2 ] / (2 exp(lv_id))

(the log-variance and 2*pi terms cancel; j includes i). It upper-bounds I(x; y) when q is close to the
true conditional. q is trained by maximising the log-likelihood of positive pairs
(:meth:`CLUB.log_likelihood` = mean_i sum_d [-(mu - y)^2 / exp(lv) - lv], as in the CLUB code).

How the encoder and q are updated (:func:`club_terms`, ``club_update``):

* ``alternate`` (default, the CLUB paper's procedure): q minimises its own negative log-likelihood on
  the pairs with y detached, and the encoder minimises the bound with q's outputs detached. Both
  gradients come from the same step (one engine optimizer step, each parameter set receiving only its
  own objective's gradient), i.e. a simultaneous rather than strictly sequential alternation.
* ``joint`` (OAML as coded): the bound is minimised over the encoder and q together and q's
  likelihood step is never taken.

The marginal term is computed in O(N D) from the batch moments of y (mean_j (y_j - mu)^2 =
E[y^2] - 2 mu E[y] + mu^2) instead of the N x N x D tensor of the reference code; the value is the same.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import torch
from torch import nn

from ..utils.runtime import full_precision

ClubUpdate = Literal["alternate", "joint"]
CLUB_UPDATES = get_args(ClubUpdate)


def _mlp(sizes: Sequence[int], final: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class CLUB(nn.Module):
    """q(y | x) for x [N, x_dim], y [N, y_dim].

    ``mu_hidden`` / ``logvar_hidden``: hidden widths of the two MLPs; default ``[hidden // 2]`` each (the
    CLUB code's ``CLUB(x_dim, y_dim, hidden_size)``). OAML's DEEP_CLUB on 16384-d latents uses
    ``mu_hidden=[8192, 4096, 256]``, ``logvar_hidden=[256]``.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 512, mu_hidden: Sequence[int] | None = None,
                 logvar_hidden: Sequence[int] | None = None):
        super().__init__()
        if min(x_dim, y_dim, hidden) < 1:
            raise ValueError(f"CLUB: dimensions must be >= 1, got x_dim={x_dim}, y_dim={y_dim}, hidden={hidden}")
        mu_hidden = list(mu_hidden) if mu_hidden is not None else [max(hidden // 2, 1)]
        logvar_hidden = list(logvar_hidden) if logvar_hidden is not None else [max(hidden // 2, 1)]
        self.x_dim, self.y_dim = x_dim, y_dim
        self.p_mu = _mlp([x_dim, *mu_hidden, y_dim])
        self.p_logvar = _mlp([x_dim, *logvar_hidden, y_dim], nn.Tanh())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu [N, y_dim], logvar [N, y_dim] in [-1, 1])."""
        return self.p_mu(x), self.p_logvar(x)

    @staticmethod
    def bound_from(mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sampled vCLUB estimate (scalar) from q's outputs and y [N, D] (rows paired with mu's)."""
        inv = 0.5 * torch.exp(-logvar)
        positive = -((mu - y) ** 2) * inv                                   # [N, D]
        y_mean, y_sq = y.mean(0, keepdim=True), (y ** 2).mean(0, keepdim=True)
        negative = -(y_sq - 2 * mu * y_mean + mu ** 2) * inv               # mean_j -(y_j - mu_i)^2 / 2var
        return (positive.sum(-1) - negative.sum(-1)).mean()

    def bound(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self(x)
        return self.bound_from(mu, logvar, y)

    @staticmethod
    def log_likelihood_from(mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """mean_i sum_d [-(mu - y)^2 / exp(lv) - lv] (the CLUB code's ``loglikeli``, 2x the Gaussian
        log-density up to a constant)."""
        return (-((mu - y) ** 2) * torch.exp(-logvar) - logvar).sum(-1).mean()

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self(x)
        return self.log_likelihood_from(mu, logvar, y)

    def learning_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.log_likelihood(x, y)


def club_terms(club: CLUB, x: torch.Tensor, y: torch.Tensor, update: str = "alternate"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(bound for the encoder's loss, q's own loss, bound value for logging) for one step.

    x: the estimator's input (e.g. outliers, constants); y: the encoder's features (with gradient).
    ``alternate``: bound uses q's outputs detached (gradient only into y) and q's loss is its negative
    log-likelihood with y detached. ``joint``: the bound carries gradient into both and q's loss is 0.
    Add ``weight * bound + q_loss`` to the total loss.
    """
    if update not in CLUB_UPDATES:
        raise ValueError(f"club_update must be one of {', '.join(CLUB_UPDATES)}, got {update!r}")
    with full_precision():  # q and its likelihood in float32 (under autocast ``x.float()`` alone is cast back)
        mu, logvar = club(x.float())
        y = y.float()
        if update == "joint":
            b = CLUB.bound_from(mu, logvar, y)
            return b, b.new_zeros(()), b.detach()
        b = CLUB.bound_from(mu.detach(), logvar.detach(), y)
        q_loss = -CLUB.log_likelihood_from(mu, logvar, y.detach())
        return b, q_loss, b.detach()
