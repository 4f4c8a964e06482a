"""CLUB estimator (openood_ext/trainers/club.py): bound formula, update modes, correlated Gaussians."""

import math

import pytest
import torch

from openood_ext.trainers.club import CLUB, club_terms


def test_bound_matches_reference_n2_formula():
    torch.manual_seed(0)
    mu, lv, y = torch.randn(7, 5), torch.tanh(torch.randn(7, 5)), torch.randn(7, 5)
    pos = -((mu - y) ** 2) / 2 / lv.exp()
    neg = (-((y[None, :, :] - mu[:, None, :]) ** 2).mean(1)) / 2 / lv.exp()   # the CLUB code's N x N form
    ref = (pos.sum(-1) - neg.sum(-1)).mean()
    assert torch.allclose(CLUB.bound_from(mu, lv, y), ref, atol=1e-5)
    ll = (-((mu - y) ** 2) / lv.exp() - lv).sum(1).mean()
    assert torch.allclose(CLUB.log_likelihood_from(mu, lv, y), ll)


def test_update_modes_route_gradients():
    torch.manual_seed(0)
    club = CLUB(3, 4, hidden=8)
    x, y = torch.randn(6, 3), torch.randn(6, 4, requires_grad=True)
    b, q_loss, _ = club_terms(club, x, y, "alternate")
    b.backward()
    assert y.grad is not None and all(p.grad is None for p in club.parameters())
    y.grad = None
    q_loss.backward()
    assert y.grad is None and all(p.grad is not None for p in club.parameters())
    club.zero_grad(set_to_none=True)
    b, q_loss, _ = club_terms(club, x, y, "joint")
    assert q_loss.item() == 0
    b.backward()
    assert y.grad is not None and all(p.grad is not None for p in club.p_mu.parameters())
    with pytest.raises(ValueError):
        club_terms(club, x, y, "both")


def _fit_and_estimate(rho: float, d: int = 4, steps: int = 250, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    club = CLUB(d, d, hidden=32)
    opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    s = math.sqrt(1 - rho ** 2)
    for _ in range(steps):
        x = torch.randn(256, d, generator=g)
        y = rho * x + s * torch.randn(256, d, generator=g)
        opt.zero_grad()
        club.learning_loss(x, y).backward()
        opt.step()
    with torch.no_grad():
        x = torch.randn(20000, d, generator=g)
        y = rho * x + s * torch.randn(20000, d, generator=g)
        return club.bound(x, y).item()


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.7])
def test_correlated_gaussians_upper_bound_and_tracking(rho):
    """d = 4 independent pairs with correlation rho. Analytic I = -d/2 log(1 - rho^2); with the true
    conditional, vCLUB = d rho^2 / (1 - rho^2). The learned estimate must lie above I and within 15 %
    (+0.05 nats) of the true-conditional vCLUB value."""
    d = 4
    mi = -d / 2 * math.log(1 - rho ** 2)
    vclub = d * rho ** 2 / (1 - rho ** 2)
    est = _fit_and_estimate(rho, d)
    print(f"rho={rho}: analytic MI {mi:.4f}, true-q vCLUB {vclub:.4f}, learned estimate {est:.4f}")
    assert est >= mi
    assert abs(est - vclub) <= 0.15 * vclub + 0.05
