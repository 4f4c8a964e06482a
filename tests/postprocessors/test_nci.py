"""NCI against its definition: w_yhat . (z - mu) / ||z - mu|| + alpha ||z||_1."""

import numpy as np
import pytest
from zoo_helpers import build, outputs

from openood_ext.errors import ConfigError


def test_nci_hand_case():
    w = np.array([[1.0, 0.0], [0.0, 2.0]])
    train = np.array([[1.0, 1.0], [3.0, 1.0]])  # mean (2, 1)
    pp = build("nci", alpha=0.5).fit(outputs(train, w))
    z = np.array([[5.0, 1.0], [2.0, 4.0], [-1.0, 5.0]])
    # row 0: pred 0, z - mu = (3, 0): 3/3 + 0.5*6; row 1: pred 1, (0, 3): 2*3/3 + 0.5*6; row 2: pred 1, (-3, 4): 8/5 + 3
    np.testing.assert_allclose(pp.score(outputs(z, w)), [1 + 3, 2 + 3, 1.6 + 3], rtol=1e-6)


def test_nci_sign_aligned_with_predicted_weight_scores_higher():
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    pp = build("nci", alpha=0.0).fit(outputs(np.zeros((2, 2)), w))
    aligned, oblique = pp.score(outputs([[3.0, 0.0], [3.0, 2.9]], w))
    assert aligned > oblique


def test_nci_negative_alpha_is_a_config_error():
    with pytest.raises(ConfigError, match="'alpha': expected float >= 0"):
        build("nci", alpha=-0.1)
