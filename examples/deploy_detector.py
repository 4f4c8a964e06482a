"""Deploy one OOD detector: fit it, calibrate a cut-off, save it, load it in another process, flag inputs.

A small CNN is trained for a few epochs on the embedded ``digits`` benchmark (8x8 digits 0-5), a KNN
detector is fitted on its training images, its cut-off calibrated to keep 95 % of the ID validation
images, and the saved detector (fitted statistics only, a few hundred KB) flags far-OOD photos.

    python examples/deploy_detector.py [--data-root data] [--epochs 3] [--out knn.pt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from openood_ext import Detector
from openood_ext.datasets.cli import load_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=None, help="where to save the detector (default: a temporary file)")
    args = parser.parse_args()

    torch.manual_seed(0)
    bench = load_benchmark("digits", Path(args.data_root) if args.data_root else None)
    bench.prepare()  # digits is generated on first use; other benchmarks: openood-ext data prepare NAME
    loader = lambda split, **kw: bench.loader(bench.split(split), batch_size=64, **kw)  # noqa: E731

    # any classifier: here a plain nn.Sequential, trained briefly
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 6))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(args.epochs):
        for images, labels, _ in loader("id_train", train=True):
            opt.zero_grad()
            nn.functional.cross_entropy(net(images), labels).backward()
            opt.step()
    net.eval()

    det = Detector("knn", net, k=10).fit(loader("id_train"))
    cut = det.threshold(loader("id_val"), tpr=0.95)
    path = det.save(args.out or Path(tempfile.mkdtemp()) / "knn.pt")
    print(f"fitted {det.name}, cut-off {cut:.4f} (keeps 95 % of ID validation images), saved to {path} "
          f"({path.stat().st_size // 1024} KB)")

    deployed = Detector.load(path, net)  # e.g. in the serving process, with the same network
    for split in ("id_test", "digits6to9", "photos"):
        flagged = torch.cat([~deployed.predict(images) for images, *_ in loader(split)])
        print(f"{split:>12}: {100 * flagged.float().mean():5.1f} % flagged as out-of-distribution")


if __name__ == "__main__":
    main()
