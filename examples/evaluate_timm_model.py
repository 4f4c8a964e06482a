"""Evaluate a timm model on an OOD benchmark with the model's own preprocessing (its data config).

A timm ResNet-18 with random weights (``pretrained=False``: no download) on the embedded ``digits``
benchmark. The transform is timm's, from the model's data config (mean, std, interpolation), at a small
input size so that it runs in seconds on a CPU; ``preprocess="timm"`` takes the data config as is
(224x224 for this model).

    python examples/evaluate_timm_model.py [--model resnet18] [--image-size 32] [--data-root data]
"""

from __future__ import annotations

import argparse

import timm
import torch
from timm.data import create_transform, resolve_data_config

from openood_ext import Evaluator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a timm model name")
    parser.add_argument("--image-size", type=int, default=32, help="input size (0: the model's own)")
    parser.add_argument("--postprocessors", default=None, help="comma-separated names (default: a few of the zoo)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    net = timm.create_model(args.model, pretrained=False, num_classes=6)
    if args.image_size:
        config = resolve_data_config({}, model=net)
        config.update(input_size=(3, args.image_size, args.image_size), crop_pct=1.0)
        preprocess = create_transform(**config)
    else:
        preprocess = "timm"
    pps = args.postprocessors.split(",") if args.postprocessors else ["msp", "mls", "ebo", {"name": "knn", "k": 50}, "vim"]
    ev = Evaluator(net, benchmark="digits", postprocessors=pps,
                   data_root=args.data_root, preprocess=preprocess, batch_size=128)
    df = ev.eval_ood()
    print(df.round(2).to_string())
    print("features from:", ev.net.describe())
    if args.out:
        ev.save(args.out)


if __name__ == "__main__":
    main()
