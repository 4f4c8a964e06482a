"""KNN search without faiss, with a (faked) faiss-gpu, and the torch backend's memory budget."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from openood_ext.errors import ConfigError
from openood_ext.features import NetOutputs
from openood_ext.postprocessors.knn_search import KNNIndex, rows_per_chunk
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.utils import faiss_support


@pytest.fixture
def no_faiss(monkeypatch):
    """An environment where faiss is not installed (import fails, find_spec finds nothing)."""
    monkeypatch.setitem(sys.modules, "faiss", None)


class FakeGpuFaiss(types.ModuleType):
    """The few faiss-gpu calls KNN makes, searching exactly with numpy; records GPU placement."""

    def __init__(self):
        super().__init__("faiss")
        self.resources_made, self.placed_on = 0, []
        test = self

        class StandardGpuResources:
            def __init__(self):
                test.resources_made += 1

        class IndexFlatL2:
            def __init__(self, dim):
                self.bank = np.zeros((0, dim), np.float32)

            def add(self, x):
                self.bank = np.concatenate([self.bank, x])

            def reset(self):
                self.bank = self.bank[:0]

            def search(self, q, k):
                d2 = ((q[:, None, :] - self.bank[None]) ** 2).sum(-1)
                return np.sort(d2, axis=1)[:, :k], np.argsort(d2, axis=1)[:, :k]

        def index_cpu_to_gpu(res, device, index):
            assert isinstance(res, StandardGpuResources)
            test.placed_on.append(device)
            index.resources = res  # a real GPU index borrows them: they must outlive it
            return index

        self.StandardGpuResources, self.IndexFlatL2, self.index_cpu_to_gpu = (
            StandardGpuResources, IndexFlatL2, index_cpu_to_gpu)


@pytest.fixture
def fake_faiss_gpu(monkeypatch):
    fake = FakeGpuFaiss()
    monkeypatch.setitem(sys.modules, "faiss", fake)
    monkeypatch.setattr(faiss_support, "faiss_available", lambda: True)
    monkeypatch.setattr(faiss_support, "_RESOURCES", {})
    monkeypatch.setattr(faiss_support, "_GPU_INDEXES", {})
    return fake


def _data(m=500, n=90, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g), torch.randn(n, d, generator=g)


def test_chunked_search_equals_unchunked_and_blocks_respect_the_budget():
    bank, queries = _data()
    whole = KNNIndex(bank, backend="torch", device="cpu", memory_mb=1024)
    ref = whole.search(queries, 7)
    assert whole.largest_chunk == len(queries)  # one block fits the default budget
    budget_mb = 3 * 4 * len(bank) * 10 / 2 ** 20  # exactly 10 queries' temporaries
    small = KNNIndex(bank, backend="torch", device="cpu", memory_mb=budget_mb)
    torch.testing.assert_close(small.search(queries, 7), ref)
    assert small.largest_chunk == 10
    brute = torch.cdist(queries.double(), bank.double()).topk(7, largest=False).values.float()
    torch.testing.assert_close(ref, brute, atol=1e-4, rtol=1e-4)


def test_rows_per_chunk_bounds_the_temporaries():
    # ImageNet scale: 1.28M bank rows, 1 GiB -> 69 queries per block (3 float32 temporaries each)
    assert rows_per_chunk(1_281_167, 1024, 2048) == 2 ** 30 // (12 * 1_281_167) == 69
    assert rows_per_chunk(10, 1024, 2048) == 2048  # capped by chunk_size
    assert rows_per_chunk(10 ** 12, 1, 2048) == 1  # never zero
    with pytest.raises(ValueError, match="memory_mb"):
        KNNIndex(torch.eye(2), backend="torch", memory_mb=0)


def test_knn_works_without_faiss(no_faiss):
    assert not faiss_support.faiss_available()
    bank, queries = _data()
    assert KNNIndex(bank, device="cpu").backend == "torch"
    with pytest.raises(ConfigError, match=r"faiss is not installed .*openood_ext\[faiss\]"):
        KNNIndex(bank, backend="faiss", device="cpu")
    pp = POSTPROCESSORS.build({"name": "knn", "k": 3, "memory_mb": 0.01})
    pp.fit(NetOutputs(torch.zeros(len(bank), 2), bank))
    conf = pp.score(NetOutputs(torch.zeros(len(queries), 2), queries))
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    kth = torch.cdist(unit(queries).double(), unit(bank).double()).topk(3, largest=False).values[:, -1]
    np.testing.assert_allclose(conf, -kth.numpy(), atol=1e-5)


def test_faiss_gpu_index_sits_on_the_asked_gpu_and_reuses_its_resources(fake_faiss_gpu):
    bank, queries = _data(m=60, n=5)
    a = KNNIndex(bank, backend="faiss", device="cuda:1")
    b = KNNIndex(bank, backend="faiss", device="cuda:1")
    assert fake_faiss_gpu.placed_on == [1, 1] and fake_faiss_gpu.resources_made == 1
    assert a._index.resources is b._index.resources is faiss_support.gpu_resources(1)
    brute = torch.cdist(queries.double(), bank.double()).topk(4, largest=False).values.float()
    torch.testing.assert_close(a.search(queries, 4), brute, atol=1e-4, rtol=1e-4)


def test_repeated_gpu_searches_reuse_their_indexes(fake_faiss_gpu):
    """NPOS searches every step, one index per class: the GPU indexes are made once and emptied."""
    first = [faiss_support.flat_l2_index(4, 0, slot=("npos", c)) for c in range(3)]
    for index in first:
        index.add(np.ones((5, 4), np.float32))
    again = [faiss_support.flat_l2_index(4, 0, slot=("npos", c)) for c in range(3)]
    assert all(a is b for a, b in zip(first, again)) and all(len(i.bank) == 0 for i in again)
    assert fake_faiss_gpu.placed_on == [0, 0, 0] and fake_faiss_gpu.resources_made == 1
    assert faiss_support.flat_l2_index(4, 0, slot=("npos", 0)) is not faiss_support.flat_l2_index(4, 1, slot=("npos", 0))


def test_nnguide_and_relation_blocks_follow_the_memory_budget_without_changing_results():
    from openood_ext.postprocessors.nnguide import mean_topk_inner_product
    from openood_ext.postprocessors.relation import relation_score
    bank, queries = _data(m=300, n=50, d=6, seed=3)
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    bank, queries = unit(bank), unit(queries)
    tiny = 8 * 300 * 7 / 2 ** 20  # 7 queries' float64 products
    ref = mean_topk_inner_product(queries, bank.double(), 5)
    torch.testing.assert_close(mean_topk_inner_product(queries, bank.double(), 5, memory_mb=tiny), ref)
    brute = (queries.double() @ bank.double().T).topk(5, dim=1).values.mean(dim=1)
    torch.testing.assert_close(ref, brute)
    p, pb = torch.softmax(queries, 1), torch.softmax(bank, 1)
    torch.testing.assert_close(relation_score(queries, p, bank, pb, memory_mb=tiny), relation_score(queries, p, bank, pb))
    assert rows_per_chunk(300, tiny, 4096, bytes_per_pair=8) == 7
