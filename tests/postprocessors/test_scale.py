"""SCALE against its definition: z * exp(sum(z) / sum(top-k z)), then the energy of W z' + b."""

import numpy as np
import pytest
from zoo_helpers import build, logsumexp, outputs

from openood_ext.errors import ConfigError


def test_scale_hand_case():
    z = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 0.0, 2.0]])
    w = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    b = np.array([0.1, -0.2, 0.3])
    # percentile 50 of D = 4: k = 2 kept in s2; row 0: s1 = 10, s2 = 7; row 1: s1 = 2.5, s2 = 2.5
    factor = np.exp(np.array([10 / 7, 1.0]))
    expected = logsumexp((z * factor[:, None]) @ w.T + b)
    conf = build("scale", percentile=50).score(outputs(z, w, b))
    np.testing.assert_allclose(conf, expected, rtol=1e-6)
    # percentile 0 keeps every entry: factor e for every row
    np.testing.assert_allclose(build("scale", percentile=0).score(outputs(z, w, b)),
                               logsumexp((z * np.e) @ w.T + b), rtol=1e-6)


def test_scale_sign_larger_activations_score_higher():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 16))
    z = np.abs(rng.normal(size=(20, 16)))
    pp = build("scale")
    strong, weak = pp.score(outputs(3 * z, np.abs(w))), pp.score(outputs(z, np.abs(w)))
    assert (strong > weak).all()  # ID-like (strong, positive evidence) above weak activations


@pytest.mark.parametrize("value", [100, -1, 101])
def test_scale_percentile_out_of_range_is_a_config_error(value):
    with pytest.raises(ConfigError, match="percentile"):
        build("scale", percentile=value)
