"""``openood-ext bench npos`` (or ``python -m openood_ext.bench.npos``): NPOS synthesis throughput.

At the paper's sizes by default (10 classes x queue 1000 x 512-d, K 300, select 200, pick 2, 600
candidates, keep 200 -> 4,000 outliers per call), times one synthesis call of

* ``faiss``: :func:`~openood_ext.synthesizers.npos.npos_sample` with one faiss index per class;
* ``torch``: the same with one batched matmul + top-k over all classes;
* ``loop``: a per-class, per-boundary-point Python loop like the published ``generate_outliers`` (faiss
  when importable, else torch; one index per class, one candidate search per boundary point);

and prints outliers per second and the ratios. Median of ``--repeats`` calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..synthesizers.npos import NPOSParams, faiss_available, npos_sample
from ..utils.io import write_text
from ..utils.timing import median_time


def loop_sample(queues: torch.Tensor, p: NPOSParams, generator: torch.Generator) -> torch.Tensor:
    """Reference: per class and per boundary point, as the published code is structured (intended ranking)."""
    use_faiss = faiss_available()
    if use_faiss:
        import faiss
    noise = torch.randn(p.candidates, queues.shape[2], generator=generator)
    out = []
    for raw in queues:
        unit = raw / raw.norm(dim=1, keepdim=True)
        if use_faiss:
            index = faiss.IndexFlatL2(unit.shape[1])
            index.add(np.ascontiguousarray(unit.numpy()))
            kth = lambda q: torch.from_numpy(index.search(np.ascontiguousarray(q.numpy()), p.K)[0][:, -1])  # noqa: E731
        else:
            kth = lambda q: torch.cdist(q, unit).topk(p.K, dim=1, largest=False).values[:, -1]  # noqa: E731
        top = kth(unit).topk(p.select).indices
        for i in top[torch.randperm(p.select, generator=generator)[:p.pick]]:
            cand = raw[i] + p.sigma * noise
            score = kth(cand / cand.norm(dim=1, keepdim=True))
            out.append(cand[score.topk(p.keep).indices])
    return torch.cat(out)


def bench(classes=10, queue=1000, dim=512, K=300, select=200, pick=2, candidates=600, keep=200,
          repeats=3, seed=0) -> dict:
    p = NPOSParams(K, select, pick, candidates, keep, 0.1).check(queue)
    queues = torch.randn(classes, queue, dim, generator=torch.Generator().manual_seed(seed)).abs()
    n_out = classes * pick * keep
    rows = {}
    backends = (["faiss"] if faiss_available() else []) + ["torch"]
    for be in backends:
        g = torch.Generator().manual_seed(seed)
        rows[be] = median_time(lambda: npos_sample(queues, p, generator=g, backend=be), repeats)
    g = torch.Generator().manual_seed(seed)
    rows["loop"] = median_time(lambda: loop_sample(queues, p, g), repeats)
    result = {"sizes": {"classes": classes, "queue": queue, "dim": dim, "K": K, "select": select, "pick": pick,
                        "candidates": candidates, "keep": keep}, "outliers_per_call": n_out,
              "threads": torch.get_num_threads(), "seconds": rows,
              "outliers_per_s": {k: n_out / v for k, v in rows.items()}}
    result["ratios"] = {f"loop/{k}": rows["loop"] / rows[k] for k in backends}
    if "faiss" in rows:
        result["ratios"]["torch/faiss"] = rows["torch"] / rows["faiss"]
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="openood-ext bench npos", description=__doc__.split("\n\n")[0])
    for name, default in (("classes", 10), ("queue", 1000), ("dim", 512), ("K", 300), ("select", 200),
                          ("pick", 2), ("candidates", 600), ("keep", 200), ("repeats", 3), ("seed", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("-o", "--output", help="also write the figures as JSON here")
    args = vars(ap.parse_args(argv))
    output = args.pop("output")
    r = bench(**args)
    s = r["sizes"]
    print(f"NPOS synthesis, {s['classes']} classes x queue {s['queue']} x {s['dim']}-d, K={s['K']}, "
          f"{r['outliers_per_call']} outliers per call, {r['threads']} torch threads (median of {args['repeats']})")
    for k, sec in r["seconds"].items():
        print(f"  {k:6s} {sec:8.3f} s/call  {r['outliers_per_s'][k]:10.0f} outliers/s")
    print("  ratios: " + ", ".join(f"{k} = {v:.2f}x" for k, v in r["ratios"].items()))
    if output:
        write_text(output, json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
