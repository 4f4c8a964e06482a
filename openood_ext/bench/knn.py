"""``openood-ext bench knn``: exact KNN search (postprocessors/knn_search.py) with faiss against torch on
the same bank and queries, and which backend ``auto`` picks, measured in one run.

    openood-ext bench knn [--bank 50000] [--dim 512] [--queries 10000] [--k 50] [--rounds 2]

Bank and queries are L2-normalised Gaussian vectors (the KNN postprocessor's geometry; exact search
costs the same for any data). Each timing covers building the index and searching every query. The two
backends alternate (ABBA) ``--rounds`` times, no warm-up (one search is long enough to amortise it);
medians, torch / faiss (> 1: faiss faster), the largest difference between their distances, and whether
``KNNIndex(backend="auto")`` chose the faster one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..postprocessors.knn_search import KNNIndex, faiss_available, l2_normalize


def bench_knn(bank: int = 50_000, dim: int = 512, queries: int = 10_000, k: int = 50, rounds: int = 2,
              seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    xb = l2_normalize(torch.randn(bank, dim, generator=g))
    xq = l2_normalize(torch.randn(queries, dim, generator=g))
    backends = ["faiss", "torch"] if faiss_available() else ["torch"]
    times: dict[str, list[float]] = {b: [] for b in backends}
    results = {}
    for r in range(rounds):
        for b in (backends if r % 2 == 0 else backends[::-1]):
            t0 = time.perf_counter()
            results[b] = KNNIndex(xb, backend=b).search(xq, k)
            times[b].append(time.perf_counter() - t0)
    med = {b: statistics.median(v) for b, v in times.items()}
    auto = KNNIndex(xb[:10], backend="auto").backend
    out = {"bank": bank, "dim": dim, "queries": queries, "k": k, "rounds": rounds, "threads": torch.get_num_threads(),
           "seconds": {b: round(v, 3) for b, v in med.items()}, "runs": {b: [round(x, 3) for x in v] for b, v in times.items()},
           "auto_picks": auto}
    if len(backends) == 2:
        out["ratio_torch_over_faiss"] = round(med["torch"] / med["faiss"], 3)
        out["faster"] = min(med, key=med.get)
        out["auto_picks_faster"] = auto == out["faster"]
        out["max_abs_distance_difference"] = float((results["faiss"] - results["torch"]).abs().max())
    return out


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench knn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    r = bench_knn(args.bank, args.dim, args.queries, args.k, args.rounds)
    print(f"bank {r['bank']} x {r['dim']}, {r['queries']} queries, k={r['k']}, {r['rounds']} alternating rounds, "
          f"{r['threads']} torch threads")
    for b, s in r["seconds"].items():
        print(f"{b}: {s:.2f} s (runs {r['runs'][b]})")
    if "ratio_torch_over_faiss" in r:
        print(f"torch / faiss = {r['ratio_torch_over_faiss']:.3f} ({r['faster']} faster); distances differ by at most "
              f"{r['max_abs_distance_difference']:.2e}")
        print(f"backend auto picks {r['auto_picks']}: {'the faster' if r['auto_picks_faster'] else 'NOT the faster'}")
    else:
        print(f"faiss is not installed; auto picks {r['auto_picks']}")
    return 0
