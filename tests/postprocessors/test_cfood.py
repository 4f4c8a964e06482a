"""CFOOD against a literal per-sample implementation of its definition (OpenOOD's loop, in numpy)."""

import numpy as np
import pytest
import torch
from zoo_helpers import build, outputs

from openood_ext.errors import ConfigError
from openood_ext.postprocessors.cfood import KAPPA_GRID


def by_hand(ref, test, k):
    """For each test point: the smallest grid kappa at which >= k of the reference points have it within their
    (kappa n)-th nearest-neighbour distance (self excluded); 1 when none."""
    unit = lambda a: a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-10)  # noqa: E731
    ref, test = unit(ref), unit(test)
    n = len(ref)
    pos = (KAPPA_GRID * n - 1).astype(int)
    keep = np.concatenate(([True], pos[:-1] < pos[1:]))
    pos, kval = pos[keep], KAPPA_GRID[keep]
    knn = np.array([np.sort(((r - ref) ** 2).sum(1))[pos + 1] for r in ref])
    out = []
    for v in test:
        dst = ((v - ref) ** 2).sum(1)
        count = (knn >= dst[:, None]).sum(0) / n
        hit = np.flatnonzero(count >= k)
        out.append(kval[hit[0]] if len(hit) else 1.0)
    return -np.array(out)


def test_cfood_equals_the_literal_definition():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 5)) + 1.0
    test = np.concatenate([rng.normal(size=(15, 5)) + 1.0, rng.normal(size=(15, 5)) * 3])
    for alpha, k in ((1.0, 0.05), (0.5, 0.01), (1.0, 0.3)):
        pp = build("cfood", alpha=alpha, k=k, seed=3, chunk=7).fit(outputs(train))
        t32 = train.astype(np.float32).astype(np.float64)
        ref = t32 if alpha == 1 else t32[torch.randperm(300, generator=torch.Generator().manual_seed(3))[:int(alpha * 300)].numpy()]
        np.testing.assert_array_equal(pp.score(outputs(test)), by_hand(ref, test.astype(np.float32).astype(np.float64), k))


def test_cfood_reference_draw_is_the_global_seed_draw():
    """OpenOOD draws with torch.randperm on the global generator: seeding it with ``seed`` gives our set."""
    torch.manual_seed(7)
    assert torch.equal(torch.randperm(50), torch.randperm(50, generator=torch.Generator().manual_seed(7)))


def test_cfood_sign_inliers_score_higher():
    rng = np.random.default_rng(1)
    centre = np.array([1.0, 0, 0, 0])
    train = centre + 0.1 * rng.normal(size=(200, 4))
    pp = build("cfood", alpha=1.0, k=0.05).fit(outputs(train))
    inlier, outlier = pp.score(outputs([centre + 0.01, [0.0, 0.0, 1.0, 0.0]]))
    assert inlier > outlier and outlier == -1.0


@pytest.mark.parametrize("kw, match", [({"alpha": 0}, "'alpha'"), ({"alpha": 1.5}, "'alpha'"), ({"k": 0}, "'k'"),
                                       ({"k": 2}, "'k'")])
def test_cfood_bad_settings_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        build("cfood", **kw)
