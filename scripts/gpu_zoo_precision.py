"""The whole postprocessor zoo on one trained checkpoint under several precisions; AUROCs compared.

    python scripts/gpu_zoo_precision.py --checkpoint CKPT --benchmark digits --data-root DATA \
        --device cuda --precisions fp32 bf16 fp16 --limit 5000 --tolerance 0.1 --out zoo.json

The shared passes (outputs and layer taps) run under each precision's autocast, as ``precision:`` of
``test_ood``; input-gradient methods (ODIN, MDSEns's scoring) run in fp32 as in the pipeline. Prints one
line per postprocessor (AUROC per precision, averaged over the OOD sets present, and the largest move
against fp32) and ``zoo precision: PASS|FAIL ...``; exit status 1 when a move exceeds ``--tolerance``
points or a score is non-finite. ``--limit N`` keeps the first N images of each split."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from openood_ext.datasets.cli import load_benchmark
from openood_ext.evaluators.metrics import auroc
from openood_ext.networks import NETWORKS
from openood_ext.networks.checkpoint import load_checkpoint
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.schedule import LoaderSource, Scheduler
from openood_ext.utils.runtime import resolve_device

CHEAPER = {"odin": {"grad_batch_size": 128}, "mds_ensemble": {"grad_batch_size": 128}}


def zoo_names(only=None) -> list[str]:
    names = [n for n in POSTPROCESSORS.names()
             if POSTPROCESSORS.get(n).__module__.startswith("openood_ext.postprocessors.")]
    return [n for n in names if n != "vmdls" and (not only or n in only)]  # vmdls: its own network only


def loaders_of(bench, limit: int | None, batch_size: int, workers: int, pin: bool) -> tuple[dict, list[str]]:
    out, ood = {}, []
    for split in bench.splits():
        if split.name not in ("id_train", "id_val", "id_test") and not split.is_ood:
            continue
        if split.is_ood and (split.name == "ood_val" or bench.missing_reason(split) is not None):
            continue
        ds = bench.dataset(split)
        if limit:
            ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
        template = bench.loader(split, batch_size=batch_size)
        out[split.name] = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                                      collate_fn=template.collate_fn, pin_memory=pin)
        if split.is_ood:
            ood.append(split.name)
    return out, ood


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--benchmark", default="digits")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--only", nargs="*", default=None, help="postprocessor names (default: the whole zoo)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=4)
    p.add_argument("--tolerance", type=float, default=0.1, help="largest AUROC move against fp32, in points")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    blob = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    net = NETWORKS.build(blob["network"])
    load_checkpoint(a.checkpoint, net)
    net = net.to(dev).eval()
    bench = load_benchmark(a.benchmark, a.data_root)
    cuda = dev.type == "cuda"
    loaders, ood = loaders_of(bench, a.limit, a.batch_size, a.num_workers if cuda else 0, cuda)
    names = zoo_names(a.only)
    table, seconds, bad = {}, {}, []
    for precision in a.precisions:
        t0 = time.perf_counter()
        pps = {n: POSTPROCESSORS.build({"name": n, **CHEAPER.get(n, {})}) for n in names}
        torch.manual_seed(0)
        result = Scheduler(pps, LoaderSource(net, loaders, dev, precision=precision), net, dev).run(
            ["id_test", *ood]).scores
        seconds[precision] = round(time.perf_counter() - t0, 1)
        for name, per in result.items():
            idc = per["id_test"].conf
            if not all(np.isfinite(s.conf).all() for s in per.values()):
                bad.append(f"{name}@{precision}: non-finite scores")
                continue
            vals = [100 * auroc(np.r_[idc, per[s].conf], np.r_[np.ones(len(idc)), np.zeros(len(per[s].conf))])
                    for s in ood]
            table.setdefault(name, {})[precision] = round(float(np.mean(vals)), 3)
    print(f"{'postprocessor':16s} " + " ".join(f"{q:>8s}" for q in a.precisions) + "   max |delta|")
    worst = 0.0
    for name in names:
        row = table.get(name, {})
        deltas = [abs(row[q] - row["fp32"]) for q in a.precisions if q in row and "fp32" in row]
        move = max(deltas, default=float("nan"))
        worst = max(worst, move) if deltas else worst
        if deltas and move > a.tolerance:
            bad.append(f"{name}: AUROC moved {move:.3f} points")
        print(f"{name:16s} " + " ".join(f"{row.get(q, float('nan')):8.3f}" for q in a.precisions) + f"   {move:.3f}")
    verdict = "PASS" if not bad else "FAIL"
    print(f"zoo precision: {verdict} ({len(names)} postprocessors, {bench.name}, OOD sets {', '.join(ood)}, "
          f"largest move {worst:.3f} points, tolerance {a.tolerance}; seconds {seconds})"
          + ("" if not bad else f"; {'; '.join(bad[:5])}"))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"aurocs": table, "seconds": seconds, "problems": bad, "ood": ood,
                                     "device": str(dev), "torch": torch.__version__}, indent=2) + "\n")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
