"""VRA against its definition: activations below the low percentile set to 0 (paper) or raised to it
(OpenOOD's clip), above the high percentile clipped, then the energy of W g(z) + b."""

import numpy as np
import pytest
from zoo_helpers import build, logsumexp, outputs

from openood_ext.errors import ConfigError


def test_vra_hand_case_both_low_modes():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    val, test = rng.normal(size=(40, 6)), rng.normal(size=(8, 6))
    values = val.astype(np.float32).astype(np.float64).ravel()
    lo, hi = np.percentile(values, 20), np.percentile(values, 80)
    t = test.astype(np.float32).astype(np.float64)
    zero = np.where(t < lo, 0.0, np.minimum(t, hi))
    clip = np.clip(t, lo, hi)
    for low, g in (("zero", zero), ("clip", clip)):
        pp = build("vra", percentile_high=80, percentile_low=20, low=low).fit(None, val_outputs=outputs(val, w, b))
        assert (pp.threshold_low, pp.threshold_high) == pytest.approx((lo, hi))
        np.testing.assert_allclose(pp.score(outputs(test, w, b)), logsumexp(g @ w.T.astype(np.float32) + b.astype(np.float32)),
                                   rtol=1e-5)


def test_vra_clip_0_100_is_the_energy_score():
    rng = np.random.default_rng(3)
    w, z = rng.normal(size=(3, 5)), rng.normal(size=(10, 5))
    pp = build("vra", percentile_low=0, percentile_high=100, low="clip").fit(None, val_outputs=outputs(z, w))
    np.testing.assert_allclose(pp.score(outputs(z, w)), build("ebo").score(outputs(z, w)), rtol=1e-6)


def test_vra_sign_stronger_evidence_scores_higher():
    w = np.eye(3)
    val = np.linspace(0, 1, 30).reshape(10, 3)
    pp = build("vra").fit(None, val_outputs=outputs(val, w))
    confident, flat = pp.score(outputs([[0.85, 0.1, 0.1], [0.3, 0.3, 0.3]], w))
    assert confident > flat


@pytest.mark.parametrize("kw, match", [({"percentile_low": 90, "percentile_high": 90}, "must be below"),
                                       ({"percentile_high": 101}, "percentile_high"),
                                       ({"low": "drop"}, "'low'")])
def test_vra_bad_settings_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        build("vra", **kw)
