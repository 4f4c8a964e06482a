"""``openood-ext bench loader``: the per-image DataLoader against the tensor data path (decoded-image
cache + batched augmentation, :mod:`openood_ext.datasets.batch_source`) on the CPU, in one run.

    openood-ext bench loader [--shared /work/shared/data] [--images 5000] [--workers 2] [--batch-size 128]
                             [--epochs 2] [--train-steps 100] [--train-batch-size 32] [--rounds 2]
                             [--train-recipe eoe_cifar10]

Recipes: OpenOOD's CIFAR-10 training transform (``configs/benchmarks/cifar10.yml``), EOE's CIFAR-10
augmentation (``eoe_cifar10_ad.yml``) and FCDD's Fashion-MNIST one (``experiments/fcdd/ad_fmnist_fcdd.yml``),
on the first ``--images`` images of ``cifar10_train.tar`` (the shared data folder) and of Fashion-MNIST's
training idx file (``/usr/share/datasets/fashion-mnist``, Debian's ``dataset-fashion-mnist``).

Per recipe, ``--epochs`` shuffled epochs through ``build_train_loader`` with each backend: the PIL
DataLoader with ``--workers`` worker processes, and the tensor source with one torch thread. Printed:
images/s (wall), CPU time per training image (this process and its workers: ``getrusage``), and the
ratio of CPU time per image, PIL / tensor (the speed-up per core; goal >= 20, and <= 0.05 ms CPU per
image for the tensor path). The tensor path's one-off decoding is printed separately.

Then ``--train-steps`` optimizer steps (batches of ``--train-batch-size``) of ``eoe_cnn32`` on the
``--train-recipe`` recipe (default EOE's CIFAR-10 one) with each backend
(the engine, plain cross-entropy, one epoch per run), alternating the backends (ABBA, ``--rounds``
each): median images/s and CPU time per image of each, and their ratios. On a CPU the network's step
dominates both; the data path's share is what the CPU time per image shows.
"""

from __future__ import annotations

import argparse
import gzip
import resource
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import load_yaml, to_plain
from ..datasets import Benchmark, cpu_loops
from ..datasets.benchmark import REPO_ROOT
from ..datasets.data_settings import DataSettings
from ..networks import NETWORKS
from ..trainers import TRAINERS, Engine, split_trainer_config
from ..trainers.data import build_train_loader
from ..utils.timing import alternate

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
RECIPES = {  # name -> (config file whose benchmark.preprocessor is the recipe, image set)
    "openood_cifar10": ("configs/benchmarks/cifar10.yml", "cifar10"),
    "eoe_cifar10": ("configs/benchmarks/eoe_cifar10_ad.yml", "cifar10"),
    "fcdd_fmnist": ("configs/experiments/fcdd/ad_fmnist_fcdd.yml", "fmnist"),
}


def cifar_images(shared: Path, n: int, out: Path) -> Path:
    """The first ``n`` images of the shared CIFAR-10 training archive under ``out`` with an image list."""
    lines = []
    classes: dict[str, int] = {}
    with tarfile.open(shared / "cifar10_train.tar") as tf:
        for member in tf:
            if not member.isfile():
                continue
            target = out / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tf.extractfile(member).read())
            cls = member.name.split("/")[-2]
            lines.append(f"{member.name} {classes.setdefault(cls, len(classes))}")
            if len(lines) == n:
                break
    (out / "cifar10.txt").write_text("\n".join(lines) + "\n")
    return out / "cifar10.txt"


def fmnist_images(n: int, out: Path) -> Path:
    """The first ``n`` Fashion-MNIST training images as PNG files (label 0: one normal class) with a list."""
    with gzip.open(FMNIST) as fh:
        raw = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    (out / "fmnist").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, img in enumerate(raw):
        Image.fromarray(img, "L").save(out / "fmnist" / f"{i}.png")
        lines.append(f"fmnist/{i}.png 0")
    (out / "fmnist.txt").write_text("\n".join(lines) + "\n")
    return out / "fmnist.txt"


def recipe_benchmark(recipe: str, imglist: Path, root: Path) -> Benchmark:
    pre = to_plain(load_yaml(REPO_ROOT / RECIPES[recipe][0]).benchmark.preprocessor)
    pre.pop("normalize", None)  # EOE's per-class statistics: the constants stand in (same cost)
    return Benchmark(num_classes=10, id={"train": imglist.name, "val": imglist.name, "test": imglist.name},
                     imglist_dir=str(imglist.parent), data_root=str(root), preprocessor=pre)


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed_epochs(loader, epochs: int) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of ``epochs`` passes over ``loader``."""
    c0, t0, n = cpu_seconds(), time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch[1])
    return n, time.perf_counter() - t0, cpu_seconds() - c0


def bench_recipe(recipe: str, bench: Benchmark, args, cache: Path) -> dict:
    trainer = TRAINERS.build({"name": "base"})
    pil = build_train_loader(bench, trainer, args.batch_size, 0, loader_options={"num_workers": args.workers})
    n, wall_p, cpu_p = timed_epochs(pil, args.epochs)
    c0, t0 = cpu_seconds(), time.perf_counter()
    tensor = build_train_loader(bench, trainer, args.batch_size, 0, data=DataSettings(backend="tensor", cache_dir=str(cache)))
    decode_wall, decode_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    _, wall_t, cpu_t = timed_epochs(tensor, args.epochs)
    return {"recipe": recipe, "images": n, "pil_img_s": n / wall_p, "pil_cpu_ms": 1e3 * cpu_p / n,
            "tensor_img_s": n / wall_t, "tensor_cpu_ms": 1e3 * cpu_t / n, "ratio_cpu": cpu_p / cpu_t,
            "ratio_wall": wall_p / wall_t, "decode_s": decode_wall, "decode_cpu_ms": 1e3 * decode_cpu / len(tensor.dataset)}


def bench_training(bench: Benchmark, args, cache: Path) -> dict:
    """``--train-steps`` engine steps of eoe_cnn32 with each backend (same seed, same net), alternating
    (ABBA) ``--rounds`` times: median images/s (wall) and CPU ms per image (workers included) of each."""
    batch = args.train_batch_size
    n_images = min(len(bench.dataset(bench.split("id_train"))), args.train_steps * batch)
    bench = limited(bench, n_images, cache)
    steps = -(-n_images // batch)

    def run(backend: str) -> tuple[float, float]:
        settings, method = split_trainer_config({"name": "base", "epochs": 1, "batch_size": batch,
                                                 "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                                                 "scheduler": {"name": "constant"}})
        trainer = TRAINERS.build(method)
        loader = build_train_loader(bench, trainer, batch, 0, loader_options={"num_workers": args.workers},
                                    data=DataSettings(backend=backend, cache_dir=str(cache)))
        torch.manual_seed(0)
        net = NETWORKS.build({"name": "eoe_cnn32", "rep_dim": 10})  # 10 outputs: CE over the classes
        engine = Engine(trainer, net, loader, settings, num_classes=10)
        c0, t0 = cpu_seconds(), time.perf_counter()
        engine.fit()
        return n_images / (time.perf_counter() - t0), 1e3 * (cpu_seconds() - c0) / n_images

    pil, tensor = alternate(lambda: run("pil"), lambda: run("tensor"), args.rounds) if args.rounds > 1 else \
        ([run("pil")], [run("tensor")])
    out = {"steps": steps, "images": n_images,
           "pil": {"img_s": statistics.median(r[0] for r in pil), "cpu_ms": statistics.median(r[1] for r in pil)},
           "tensor": {"img_s": statistics.median(r[0] for r in tensor),
                      "cpu_ms": statistics.median(r[1] for r in tensor)}}
    out["ratio"] = out["tensor"]["img_s"] / out["pil"]["img_s"]
    out["cpu_ratio"] = out["pil"]["cpu_ms"] / out["tensor"]["cpu_ms"]
    return out


def limited(bench: Benchmark, n: int, where: Path) -> Benchmark:
    """``bench`` with its training list cut to the first ``n`` lines."""
    split = bench.split("id_train")
    lines = split.imglist.read_text().splitlines()[:n]
    where.mkdir(parents=True, exist_ok=True)
    sub = where / f"train_{n}.txt"
    sub.write_text("\n".join(lines) + "\n")
    return Benchmark(num_classes=bench.num_classes, id={"train": str(sub), "val": str(sub), "test": str(sub)},
                     data_root=str(bench.data_root), preprocessor=bench.preprocessor)


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench loader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default="/work/shared/data", help="folder holding cifar10_train.tar")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the PIL path")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=100, help="0: skip the training comparison")
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="training runs per backend, in ABBA order")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--train-recipe", default="eoe_cifar10", choices=[r for r in RECIPES if RECIPES[r][1] == "cifar10"],
                        help="the recipe of the training comparison (CIFAR-10 images, 10 classes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per-core figures: the tensor path and the main process on one thread
    t0 = time.perf_counter()
    compiled = cpu_loops.load_kernels()  # one-off per process: not part of the per-image figures
    print(f"colour jitter and crop on the CPU: {'compiled loops (numba), loaded' if compiled else 'tensor kernels (no numba)'}"
          f"{f' in {time.perf_counter() - t0:.2f} s' if compiled else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lists = {"cifar10": lambda: cifar_images(Path(args.shared), args.images, root),
                 "fmnist": lambda: fmnist_images(args.images, root)}
        made: dict[str, Path] = {}
        print(f"{args.images} images per recipe, batch {args.batch_size}, {args.epochs} epochs; PIL: DataLoader with "
              f"{args.workers} workers; tensor: 1 torch thread; CPU time includes the workers")
        print(f"{'recipe':<16} {'PIL img/s':>10} {'PIL ms CPU/img':>15} {'tensor img/s':>13} {'tensor ms CPU/img':>18} "
              f"{'CPU ratio':>10} {'wall ratio':>11} {'decode once':>12}")
        for recipe in [r for r in args.recipes.split(",") if r]:
            kind = RECIPES[recipe][1]
            made[kind] = made.get(kind) or lists[kind]()
            r = bench_recipe(recipe, recipe_benchmark(recipe, made[kind], root), args, root / "cache")
            print(f"{recipe:<16} {r['pil_img_s']:>10.0f} {r['pil_cpu_ms']:>15.4f} {r['tensor_img_s']:>13.0f} "
                  f"{r['tensor_cpu_ms']:>18.4f} {r['ratio_cpu']:>9.1f}x {r['ratio_wall']:>10.1f}x "
                  f"{r['decode_s']:>10.2f} s")
        if args.train_steps:
            made["cifar10"] = made.get("cifar10") or lists["cifar10"]()
            t = bench_training(recipe_benchmark(args.train_recipe, made["cifar10"], root), args, root / "cache")
            print(f"training eoe_cnn32 (engine, 1 thread), {args.train_recipe} recipe, {t['steps']} steps of "
                  f"{args.train_batch_size}, median of {args.rounds} ABBA rounds: PIL {t['pil']['img_s']:.0f} img/s "
                  f"({t['pil']['cpu_ms']:.3f} ms CPU/img), tensor {t['tensor']['img_s']:.0f} img/s "
                  f"({t['tensor']['cpu_ms']:.3f} ms CPU/img); tensor / PIL = {t['ratio']:.2f}x img/s, "
                  f"{t['cpu_ratio']:.2f}x less CPU")
    return 0
