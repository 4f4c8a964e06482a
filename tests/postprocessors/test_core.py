"""MSP, EBO, KNN and HSC against hand-computed cases and their defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openood_ext.features import NetOutputs
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.knn_search import KNNIndex, choose_backend, faiss_available


def outputs(logits=None, features=None):
    logits = torch.as_tensor(logits if logits is not None else np.zeros((len(features), 2)), dtype=torch.float32)
    features = torch.as_tensor(features if features is not None else np.zeros((len(logits), 1)), dtype=torch.float32)
    return NetOutputs(logits, features)


def test_msp_hand_case_and_range():
    conf = POSTPROCESSORS.build("msp").score(outputs(logits=[[0.0, 0.0], [math.log(3), 0.0]]))
    np.testing.assert_allclose(conf, [0.5, 0.75], rtol=1e-6)
    rnd = outputs(logits=torch.randn(200, 7) * 5)
    conf = POSTPROCESSORS.build("msp").score(rnd)
    assert conf.min() >= 1 / 7 - 1e-12 and conf.max() <= 1.0


def test_ebo_hand_case_temperature_and_shift():
    logits = [[1.0, 2.0, 3.0]]
    expected = math.log(math.e + math.e ** 2 + math.e ** 3)
    np.testing.assert_allclose(POSTPROCESSORS.build("ebo").score(outputs(logits=logits)), [expected], rtol=1e-6)
    t = 2.0
    expected_t = t * math.log(sum(math.exp(v / t) for v in logits[0]))
    np.testing.assert_allclose(POSTPROCESSORS.build({"name": "ebo", "temperature": t}).score(outputs(logits=logits)),
                               [expected_t], rtol=1e-6)
    base = torch.randn(50, 5)
    ebo = POSTPROCESSORS.build("ebo")
    shifted = ebo.score(outputs(logits=base + 1.5)) - ebo.score(outputs(logits=base))
    np.testing.assert_allclose(shifted, 1.5, rtol=1e-5)  # energy moves exactly with a common logit shift
    with pytest.raises(ValueError):
        POSTPROCESSORS.get("ebo")(temperature=0)


def test_knn_hand_case():
    train = outputs(features=[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    test = outputs(features=[[2.0, 0.0], [1.0, 1.0]])
    pp = POSTPROCESSORS.build({"name": "knn", "k": 2}).fit(train)
    # [2,0] -> unit [1,0]: distances 0, sqrt2, 2 -> 2nd nearest sqrt2
    # [1,1] -> unit [.707,.707]: distances to [1,0] and [0,1] are sqrt(2 - sqrt2)
    np.testing.assert_allclose(pp.score(test), [-math.sqrt(2), -math.sqrt(2 - math.sqrt(2))], rtol=1e-5)


def test_knn_is_invariant_to_feature_scale():
    rng = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 16, generator=rng), torch.randn(50, 16, generator=rng)
    pp = POSTPROCESSORS.build({"name": "knn", "k": 5}).fit(outputs(features=train))
    a = pp.score(outputs(features=test))
    pp2 = POSTPROCESSORS.build({"name": "knn", "k": 5}).fit(outputs(features=train * 37.0))
    np.testing.assert_allclose(pp2.score(outputs(features=test * 0.01)), a, atol=1e-5)


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_and_torch_backends_agree():
    rng = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(2000, 32, generator=rng), torch.randn(300, 32, generator=rng)
    d_faiss = KNNIndex(bank, backend="faiss").search(queries, 10)
    d_torch = KNNIndex(bank, backend="torch", chunk_size=64).search(queries, 10)
    torch.testing.assert_close(d_faiss, d_torch, atol=1e-4, rtol=1e-4)
    brute = torch.cdist(queries.double(), bank.double()).topk(10, largest=False).values.float()
    torch.testing.assert_close(d_torch, brute, atol=1e-4, rtol=1e-4)


def test_knn_auto_backend_keeps_the_search_where_the_data_is():
    assert choose_backend(faiss_ok=True, faiss_gpu=False, cuda=False) == "faiss"  # faster on CPU (BENCHMARKS.md)
    assert choose_backend(faiss_ok=True, faiss_gpu=True, cuda=True) == "faiss"
    assert choose_backend(faiss_ok=True, faiss_gpu=False, cuda=True) == "torch"  # CPU faiss would copy to host
    assert choose_backend(faiss_ok=False, faiss_gpu=False, cuda=False) == "torch"
    index = KNNIndex(torch.eye(3), backend="torch", device="cpu")
    assert index.bank.device.type == "cpu"
    torch.testing.assert_close(index.search(torch.eye(3)[:1], 2), torch.tensor([[0.0, 2 ** 0.5]]))


def test_hsc_hand_cases():
    z = [[3.0, 4.0], [0.0, 0.0]]
    conf = POSTPROCESSORS.build("hsc").score(outputs(features=z))
    np.testing.assert_allclose(conf, [-(math.sqrt(26) - 1), 0.0], rtol=1e-7)
    pp = POSTPROCESSORS.build({"name": "hsc", "center": "fit"}).fit(outputs(features=[[1.0, 1.0], [3.0, 1.0]]))
    np.testing.assert_allclose(pp.score(outputs(features=[[2.0, 1.0], [2.0, 4.0]])), [0.0, -(math.sqrt(10) - 1)], rtol=1e-7)
    on_logits = POSTPROCESSORS.build({"name": "hsc", "use": "logits"}).score(outputs(logits=[[0.0, 0.0]]))
    np.testing.assert_allclose(on_logits, [0.0])
    with pytest.raises(Exception, match="center"):
        POSTPROCESSORS.build({"name": "hsc", "center": "median"})
