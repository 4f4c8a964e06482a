"""CPU time per image of each batched op of a recipe's training pipeline, and of each form of the colour
jitter, on one torch thread (the measurements behind the EOE rows of BENCHMARKS.md's data-path section).

    python scripts/profile_batch_ops.py [--recipe configs/benchmarks/eoe_cifar10_ad.yml] [--batch 128] [--reps 40]

Random uint8 CIFAR-sized images (the ops' cost does not depend on the pixels); ``time.process_time``
per op, so a busy machine inflates the figures less than wall time would, but does not leave them
untouched (shared caches): compare rows of one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from openood_ext.config import load_yaml, to_plain
from openood_ext.datasets import batch_transforms as bt
from openood_ext.datasets import cpu_loops
from openood_ext.datasets.benchmark import REPO_ROOT
from openood_ext.datasets.tensor_recipe import tensor_pipeline


def per_image_us(fn, reps: int, batch: int) -> float:
    fn()
    t0 = time.process_time()
    for _ in range(reps):
        fn()
    return 1e6 * (time.process_time() - t0) / reps / batch


class Timed:
    """An op that adds its CPU time to ``totals`` (keeps the op's pipeline attributes)."""

    def __init__(self, op, totals: dict):
        self.op, self.totals = op, totals
        self.takes_uint8 = getattr(op, "takes_uint8", False)

    def __call__(self, *args, **kw):
        t0 = time.process_time()
        out = self.op(*args, **kw)
        name = type(self.op).__name__
        self.totals[name] = self.totals.get(name, 0.0) + time.process_time() - t0
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="configs/benchmarks/eoe_cifar10_ad.yml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, reps = args.batch, args.reps
    print(f"compiled loops: {cpu_loops.load_kernels()}; batch {n}, {reps} reps, 1 torch thread, us CPU per image")

    pre = to_plain(load_yaml(REPO_ROOT / args.recipe).benchmark.preprocessor)
    pre.pop("normalize", None)  # per-class statistics: the constants stand in (same cost)
    pipe = tensor_pipeline(pre, train=True)
    images = torch.randint(0, 256, (5000, 3, pre.get("image_size", 32), pre.get("image_size", 32)), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    totals: dict = {}
    pipe.lead = [Timed(op, totals) for op in pipe.lead]
    pipe.rest = [op if isinstance(op, bt.Normalize) else Timed(op, totals) for op in pipe.rest]
    whole = per_image_us(lambda: pipe(images[torch.randperm(len(images))[:n]], g), reps, n)
    print(f"{args.recipe}: {pipe!r}, run order {[type(getattr(o, 'op', o)).__name__ for o in pipe.lead + pipe.rest]}")
    print(f"  whole pipeline (with the index draw and gather) {whole:8.2f}")
    for name, seconds in totals.items():
        print(f"  {name:<44} {1e6 * seconds / (reps + 1) / n:8.2f}")

    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    f = x.float().div_(255)
    hue = torch.full((n,), 0.01)
    print("colour jitter (b = c = s = h = 0.01, EOE's):")
    rows = {"hue alone, tensor kernel": lambda: bt._shift_hue(f, hue),
            "hue alone, compiled loop": lambda: cpu_loops.jitter(f, torch.tensor([[3, 0, 1, 2]] * n),
                                                                 [None, None, None, hue], False)}
    for eight_bit in (False, True):
        jitter = bt.ColorJitter(0.01, 0.01, 0.01, 0.01, eight_bit=eight_bit)
        for path in ("masked", "subset", "compiled"):
            rows[f"all four, {path}, eight_bit={eight_bit}, float in"] = lambda j=jitter, p=path: j(f, g, path=p)
        rows[f"all four, compiled, eight_bit={eight_bit}, uint8 in"] = lambda j=jitter: j(x, g, path="compiled")
    for name, fn in rows.items():
        print(f"  {name:<44} {per_image_us(fn, max(4, reps // (8 if 'masked' in name else 1)), n):8.2f}")


if __name__ == "__main__":
    main()
