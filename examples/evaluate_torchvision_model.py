"""Evaluate a torchvision classifier on an OOD benchmark with one call.

A ResNet-18 with random weights (or your checkpoint: --checkpoint resnet18.pt, a state_dict) is
evaluated on the embedded ``digits`` benchmark, its 8x8 grey images resized to 32x32 RGB, then on
CIFAR-10 when that benchmark is prepared (``openood-ext data prepare cifar10``). Its penultimate
features and classifier are found by hooking its last ``nn.Linear`` (``fc``); the model is not changed.

    python examples/evaluate_torchvision_model.py [--data-root data] [--checkpoint PATH] [--out DIR]
"""

from __future__ import annotations

import argparse

import torch
import torchvision

from openood_ext import Evaluator
from openood_ext.errors import DataError

POSTPROCESSORS = ["msp", "ebo", {"name": "knn", "k": 50}, "react", "vim"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postprocessors", default=None, help="comma-separated names (default: a few of the zoo)")
    parser.add_argument("--data-root", default=None, help="data directory (default: $OPENOOD_EXT_DATA or data)")
    parser.add_argument("--checkpoint", default=None, help="a ResNet-18 state_dict (default: random weights)")
    parser.add_argument("--out", default=None, help="write metrics, scores and report.html there")
    parser.add_argument("--image-size", type=int, default=32, help="digits resized to this size")
    parser.add_argument("--skip-cifar10", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=6)  # digits has 6 ID classes
    if args.checkpoint:
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    # digits' own preprocessing, resized to 32x32 and repeated over 3 channels
    pps = args.postprocessors.split(",") if args.postprocessors else POSTPROCESSORS
    digits_rgb = {"image_size": args.image_size, "channels": 3, "mean": [0.25] * 3, "std": [0.33] * 3}
    ev = Evaluator(net, benchmark="digits", postprocessors=pps, data_root=args.data_root,
                   preprocess=digits_rgb, batch_size=128, device="auto")
    print(ev.eval_ood().round(2).to_string())
    first = next(iter(ev.scores))
    print(f"{first} confidences on the far-OOD photos:", ev.scores[first]["photos"][:5])
    if args.out:
        print("results written to", ev.save(args.out))

    if args.skip_cifar10:
        return
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    try:
        ev = Evaluator(net, benchmark="cifar10", postprocessors=pps, data_root=args.data_root)
    except DataError as exc:
        print(f"CIFAR-10 skipped: {exc}")
        return
    print(ev.eval_ood().round(2).to_string())


if __name__ == "__main__":
    main()
