"""Subset image lists for the VMDLS CPU check (configs/experiments/vmdls/test_ood_vmdls_fmnist_small.yml).

Writes <root>/benchmark_imglist/vmdls_fmnist_small/: Fashion-MNIST train 1,000 / val 200 / test 1,000 images
(class-balanced), MNIST test, Fashion-MNIST+noise and noise 1,000 each (random), all with random.Random(0).
Needs the fmnist lists (`openood-ext data prepare fmnist`) and the noise sets (noise_sets.py, see
configs/benchmarks/vmdls_fmnist.yml).   Usage: python scripts/vmdls_fmnist_small_lists.py [ROOT]
"""
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def subset(src: Path, dst: Path, n: int, per_class: bool) -> None:
    lines = [line for line in src.read_text().splitlines(keepends=True) if line.strip()]
    rng = random.Random(0)
    if per_class:
        by: dict[str, list[str]] = {}
        for line in lines:
            by.setdefault(line.split()[-1], []).append(line)
        sel = [x for k in sorted(by) for x in rng.sample(by[k], n // len(by))]
    else:
        sel = rng.sample(lines, n)
    dst.write_text("".join(sel))
    print(dst, len(sel))


def main() -> None:
    lists = Path(sys.argv[1] if len(sys.argv) > 1 else "data") / "benchmark_imglist"
    out = lists / "vmdls_fmnist_small"
    out.mkdir(parents=True, exist_ok=True)
    subset(lists / "fmnist/train_fashionmnist.txt", out / "train_fashionmnist.txt", 1000, True)
    subset(lists / "fmnist/val_fashionmnist.txt", out / "val_fashionmnist.txt", 200, True)
    subset(lists / "fmnist/test_fashionmnist.txt", out / "test_fashionmnist.txt", 1000, True)
    subset(REPO / "benchmark_imglist/mnist/test_mnist.txt", out / "test_mnist.txt", 1000, True)
    subset(lists / "vmdls_fmnist/test_fmnist_noise.txt", out / "test_fmnist_noise.txt", 1000, False)
    subset(lists / "vmdls_fmnist/test_noise.txt", out / "test_noise.txt", 1000, False)


if __name__ == "__main__":
    main()
