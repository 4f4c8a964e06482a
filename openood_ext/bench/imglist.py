"""``openood-ext bench imglist``: image-list loading (the toolkit's dataset + loader) against a plain PIL
loop over the same files and the same transform, measured in one run.

    openood-ext bench imglist [--benchmark cifar10] [--split id_test] [--images 2000] [--batch-size 256]
                              [--rounds 4]

Ours: ``Benchmark.loader(split)`` (ImglistDataset: list parsing, path resolution, bad-image handling,
the benchmark's transform; SkipCounter collate) with ``num_workers=0``. Plain: for each image-list line,
``PIL.Image.open(root / path).convert(mode)``, the same transform object, ``torch.stack`` per batch.
Both in one process, alternating (ABBA) ``--rounds`` times after a warm-up; medians of images per second
and ours / plain (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from ..config import load_yaml, to_plain
from ..datasets import BENCHMARKS
from ..datasets.benchmark import resolve_path
from ..datasets.imglist import read_imglist
from ..utils.io import write_text
from ..utils.timing import alternate


def benchmark_subset(name: str, split_name: str, images: int, out_dir: Path):
    """(benchmark, split) where the split holds the first ``images`` entries of ``split_name``'s list."""
    spec = load_yaml(resolve_path(Path("configs") / "benchmarks" / f"{name}.yml")).benchmark
    bench = BENCHMARKS.build(to_plain(spec))
    bench.prepare()
    split = bench.split(split_name)
    lines = Path(split.imglist).read_text().splitlines()[:images]
    sub = out_dir / f"{split_name}_{len(lines)}.txt"
    write_text(sub, "\n".join(lines) + "\n")
    new = dataclasses.replace(split, imglist=sub, image_root=bench.image_root_of(split))
    bench._splits = [new if s.name == split_name else s for s in bench._splits]  # as ad.limit_train_split
    return bench, new


def bench_imglist(benchmark: str = "cifar10", split: str = "id_test", images: int = 2000, batch_size: int = 256,
                  rounds: int = 4) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        bench, sub = benchmark_subset(benchmark, split, images, Path(tmp))
        dataset = bench.dataset(sub)
        n = len(dataset)
        root = bench.image_root_of(sub)
        entries = read_imglist(sub.imglist)
        transform, mode = dataset.transform, dataset.mode

        def ours() -> float:
            t0 = time.perf_counter()
            for _ in bench.loader(sub, batch_size=batch_size, num_workers=0):
                pass
            return n / (time.perf_counter() - t0)

        def plain() -> float:
            t0 = time.perf_counter()
            for start in range(0, n, batch_size):
                batch = []
                for e in entries[start:start + batch_size]:
                    with Image.open(root / e.path) as img:
                        batch.append(transform(img.convert(mode)))
                torch.stack(batch), torch.as_tensor([e.label for e in entries[start:start + batch_size]])
            return n / (time.perf_counter() - t0)

        a, b = alternate(ours, plain, rounds)
    o, p = statistics.median(a), statistics.median(b)
    return {"benchmark": benchmark, "split": split, "images": n, "batch_size": batch_size, "rounds": rounds,
            "ours_images_per_s": round(o, 1), "plain_images_per_s": round(p, 1), "ratio_ours_over_plain": round(o / p, 3),
            "ours_runs": [round(v, 1) for v in a], "plain_runs": [round(v, 1) for v in b]}


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench imglist", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="cifar10")
    parser.add_argument("--split", default="id_test")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    r = bench_imglist(args.benchmark, args.split, args.images, args.batch_size, args.rounds)
    print(f"{r['benchmark']} {r['split']}: {r['images']} images, batch {r['batch_size']}, {r['rounds']} alternating rounds")
    print(f"ours (ImglistDataset + loader): {r['ours_images_per_s']} img/s (runs {r['ours_runs']})")
    print(f"plain PIL loop: {r['plain_images_per_s']} img/s (runs {r['plain_runs']})")
    print(f"ours / plain = {r['ratio_ours_over_plain']:.3f} (goal >= 0.9)")
    return 0
