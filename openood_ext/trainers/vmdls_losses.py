"""The VMDLS training terms as pure functions (tested against hand computations and closed forms).

* :func:`pairwise_distances`: Lp-2 distances, on L2-normalised rows (``normalized``, what the published
  code measures through pytorch-metric-learning's ``LpDistance`` default) or raw rows (``euclidean``,
  the latent distance the paper speaks of).
* :func:`triplet_distancing_loss`: over all in-batch triplets (a, p, n),
  l = relu(d_ap - d_an + margin) + relu(neg_margin - d_an), averaged over the triplets with l > 0.
* :func:`margin_schedule`: the distancing margin at an epoch (``UpdateMargin``).
* :func:`class_kl`: one-sample Monte-Carlo KL of q(z|x) = N(mu, sigma^2) to the class prior
  N(m_c, prior_std^2 I), averaged over samples and latent dims per class, then over the classes present.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

Distance = Literal["normalized", "euclidean"]
DISTANCES = get_args(Distance)


def pairwise_distances(z: torch.Tensor, distance: str = "normalized") -> torch.Tensor:
    """[B, B] distances between rows of z (differentiable; the clamp keeps sqrt's gradient finite at 0)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance: expected one of {DISTANCES}, got {distance!r}")
    if distance == "normalized":
        z = torch.nn.functional.normalize(z, dim=1)
    sq = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt()


def triplet_distancing_loss(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.1,
                            neg_margin: float = 0.15, distance: str = "normalized") -> dict[str, torch.Tensor]:
    """Triplet + distancing loss over all in-batch triplets (a != p same class, n other class).

    Returns ``{"loss", "triplet", "distancing", "active"}``: ``loss`` = mean over triplets whose total
    term is > 0 of (triplet + distancing) (0 with gradient when none is); ``triplet``/``distancing`` are
    the same reduction of each part (for logging); ``active`` = the fraction of triplets with l > 0.
    """
    d = pairwise_distances(z, distance)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
    pos = same & ~eye                      # [a, p]
    neg = ~same                            # [a, n]
    valid = pos[:, :, None] & neg[:, None, :]
    trip = torch.relu(d[:, :, None] - d[:, None, :] + margin)
    dist = torch.relu(neg_margin - d)[:, None, :].expand_as(trip)
    total = trip + dist
    nonzero = valid & (total > 0)
    # no triplet active: every sum is 0 (count clamped to 1), the loss 0 with gradient; no host read
    count = nonzero.sum().clamp_min(1)
    mask = nonzero.to(z.dtype)
    loss = (total * mask).sum() / count
    return {"loss": loss, "triplet": ((trip * mask).sum() / count).detach(),
            "distancing": ((dist * mask).sum() / count).detach(),
            "active": (nonzero.sum() / valid.sum().clamp_min(1)).to(z.dtype).detach()}


def margin_schedule(epoch: int, start: float = 0.15, jump: float = 1.0, margins_epoch: int = 0,
                    max_distance: float = 32.0) -> float:
    """The distancing margin used during ``epoch`` (0-based).

    At the start of each epoch e >= ``margins_epoch`` the margin grows by ``jump`` if it is still
    <= ``max_distance`` (so it ends at the first value > max_distance, e.g. 32.15 for 0.15 + 32 jumps).
    """
    m = float(start)
    for e in range(margins_epoch, epoch + 1):
        if m <= max_distance:
            m += jump
        else:
            break
    return m


def class_kl(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, labels: torch.Tensor,
             prior_means: torch.Tensor, prior_std: float = 0.1, analytic: bool = False) -> torch.Tensor:
    """Mean over the classes c in the batch of the per-class KL estimate (a scalar, not yet x kl_coeff).

    Monte-Carlo (default, as published): mean over class-c samples and latent dims of
    log N(z; mu, sigma^2) - log N(z; m_c, prior_std^2). ``analytic=True``: the closed-form
    KL(N(mu, sigma^2) || N(m_c, prior_std^2)) per dim, averaged the same way.
    """
    std = torch.exp(0.5 * logvar)
    m = prior_means[labels].to(z.dtype)
    if analytic:
        per = (math.log(prior_std) - 0.5 * logvar + (std ** 2 + (mu - m) ** 2) / (2 * prior_std ** 2) - 0.5)
    else:
        log_q = -0.5 * ((z - mu) / std) ** 2 - 0.5 * logvar - 0.5 * math.log(2 * math.pi)
        log_p = -0.5 * ((z - m) / prior_std) ** 2 - math.log(prior_std) - 0.5 * math.log(2 * math.pi)
        per = log_q - log_p
    # per-class means by one-hot sums (no host read of which classes are present)
    onehot = torch.nn.functional.one_hot(labels, len(prior_means)).to(per.dtype)   # [N, K]
    counts = onehot.sum(0)
    per_class = (onehot.T @ per.reshape(len(labels), -1).mean(1)) / counts.clamp_min(1)
    present = (counts > 0).to(per.dtype)
    return (per_class * present).sum() / present.sum()
