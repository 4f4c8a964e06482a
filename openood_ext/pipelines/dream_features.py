"""Inputs of Dream-OOD's text-space sampler: the class anchors and the ID class features.

    python -m openood_ext.pipelines.dream_features anchors  --config <train_oaml config> [overrides] -o anchors.pt
    python -m openood_ext.pipelines.dream_features features --config <anchor-model train config> [overrides] \\
        --checkpoint model.pt --per-class 500 [--order published|list] -o features.pt

``anchors``: [C, D] class-token input embeddings of ``trainer.outliers.classes`` from ``trainer.outliers.model``
(:func:`~.sd_pipeline.class_anchors`). ``features``: the trained ``anchor_cosine`` network's projected
features (eval mode) of the first ``per_class`` training images of each class, saved as [C, N, D] -- the
``id_features`` file of ``sd_text_outliers``. ``--order published`` (default, dream-ood
``pretrain_cifar100.py``): the images come from the **training** loader, shuffled (seeded by ``seed``) and
augmented with the training transform (flip, random crop), and the first 500 seen per class are kept;
``--order list``: the image-list order with the test-time transform (deterministic, no augmentation).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from ..config import cli_overrides, load_config, to_plain
from ..errors import DataError
from ..features import extract_outputs
from ..networks.checkpoint import load_checkpoint
from ..synthesizers.sd_pipeline import SDConfig, class_anchors, load_pipeline
from ..utils.io import write_stream
from .context import build_benchmark, build_network


def write_anchors(sd_cfg, path: str | Path) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(sd_cfg, Path(tmp))
        anchors = class_anchors(pipe, sd_cfg.classes)
    write_stream(path, lambda fh: torch.save({"anchors": anchors, "classes": list(sd_cfg.classes),
                                              "model": sd_cfg.model}, fh))
    return anchors


def class_features(features: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int) -> torch.Tensor:
    """[C, N, D]: the first ``per_class`` rows of each class (N = the smallest class count if fewer)."""
    counts = torch.bincount(labels, minlength=num_classes)
    n = min(per_class, int(counts.min()))
    if n < 1:
        raise DataError(f"dream features: class {int(counts.argmin())} has no training image")
    if n < per_class:
        logging.getLogger("openood_ext").warning("dream features: %d per class (fewer than %d images in a class)", n, per_class)
    return torch.stack([features[labels == c][:n] for c in range(num_classes)])


ORDERS = ("published", "list")


def extract_features(cfg, checkpoint: str, per_class: int, device: str = "cpu", order: str = "published") -> torch.Tensor:
    """[C, N, D] features of the first ``per_class`` images per class in ``order`` (module docstring)."""
    if order not in ORDERS:
        raise DataError(f"dream features: --order must be one of {', '.join(ORDERS)}, got {order!r}")
    bench = build_benchmark(cfg)
    net = build_network(cfg, torch.device(device))
    load_checkpoint(checkpoint, net)
    loader = bench.loader(bench.split("id_train"), batch_size=int(cfg.get("batch_size", 128)),
                          train=order == "published", seed=int(cfg.get("seed", 0)))
    out = extract_outputs(net, loader, device, desc="dream features")
    return class_features(out.features, out.labels, bench.num_classes, per_class)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m openood_ext.pipelines.dream_features")
    p.add_argument("what", choices=["anchors", "features"])
    p.add_argument("--config", action="append", required=True, help="a config file (repeat for several)")
    p.add_argument("--checkpoint")
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--order", choices=ORDERS, default="published",
                   help="published: shuffled, augmented training loader (dream-ood); list: image-list order, test transform")
    p.add_argument("-o", "--output", required=True)
    args, rest = p.parse_known_args(argv)
    cfg = load_config(args.config, cli_overrides(rest))
    if args.what == "anchors":
        o = to_plain(cfg.trainer.outliers)
        sd = SDConfig(**{k: v for k, v in o.items() if k in SDConfig.__dataclass_fields__})
        a = write_anchors(sd, args.output)
        print(f"anchors {tuple(a.shape)} (norms {a.norm(dim=1).min():.3f}-{a.norm(dim=1).max():.3f}) -> {args.output}")
    else:
        if not args.checkpoint:
            p.error("features needs --checkpoint")
        f = extract_features(cfg, args.checkpoint, args.per_class, args.device, args.order)
        write_stream(args.output, lambda fh: torch.save(f, fh))
        print(f"ID features {tuple(f.shape)} -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
