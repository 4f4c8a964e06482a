"""Evaluation images/s: the per-image DataLoader against the decoded-image cache's batches, in one run.

    python scripts/bench_eval_loader.py --list LIST --root DIR [--image-size 32] [--channels 3]
                                        [--batch-size 256] [--workers 0] [--cache-dir DIR]

Reads the image list ``LIST`` (``<path> <label>`` lines, paths under ``DIR``) three ways, unshuffled and
without augmentation, as the evaluation forward does: (1) the per-image path (PIL decode, resize,
centre crop, ToTensor, Normalize in a DataLoader with ``--workers`` processes); (2) the decoded path on a
cache miss (decode once, write the cache, then batches); (3) the decoded path on a cache hit (what every
later run does). Prints wall and CPU seconds (of this process: run with the default --workers 0 to count
every decode) and images/s of each, the ratios to (1), and checks that the
tensors agree (max |difference|). No network runs: this times the data path alone.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from openood_ext.datasets import Benchmark
from openood_ext.datasets.data_settings import DataSettings
from openood_ext.datasets.eval_batches import eval_loader


def timed(make):
    """(seconds wall, seconds CPU of this process, concatenated images, label count) of one pass."""
    w, c = time.perf_counter(), time.process_time()
    images = [batch[0] for batch in make()]
    return time.perf_counter() - w, time.process_time() - c, torch.cat(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="default: a temporary directory, removed afterwards")
    a = p.parse_args()
    lst = Path(a.list).resolve()
    pre = {"image_size": a.image_size, "channels": a.channels, "mean": [0.5] * a.channels, "std": [0.25] * a.channels}
    bench = Benchmark(num_classes=10 ** 6, id={"train": lst.name, "val": lst.name, "test": lst.name},
                      imglist_dir=str(lst.parent), data_root=a.root, preprocessor=pre)
    split = bench.split("id_test")
    tmp = None if a.cache_dir else tempfile.mkdtemp(prefix="bench_eval_loader_")
    data = DataSettings(backend="tensor", cache_dir=a.cache_dir or tmp)
    try:
        rows = [("per-image DataLoader", *timed(lambda: bench.loader(split, a.batch_size, a.workers)))]
        rows.append(("decoded, cache miss", *timed(lambda: eval_loader(bench, split, data, a.batch_size))))
        rows.append(("decoded, cache hit", *timed(lambda: eval_loader(bench, split, data, a.batch_size))))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    n = len(rows[0][3])
    print(f"{n} images of {lst} at {a.image_size} px, batch {a.batch_size}, {a.workers} loader workers, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'path':<22}{'wall s':>9}{'CPU s':>9}{'images/s':>11}{'x wall':>8}{'x CPU':>8}  max|diff|")
    base_w, base_c, base_x = rows[0][1:]
    for name, w, c, x in rows:
        print(f"{name:<22}{w:>9.2f}{c:>9.2f}{n / w:>11.0f}{base_w / w:>8.1f}{base_c / max(c, 1e-9):>8.1f}"
              f"  {(x - base_x).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
