"""Score an unlabeled image folder with a trained AD cell: ``openood-ext ad-score``.

    openood-ext ad-score --checkpoint RUN/normal_<c>/seed_<s>/checkpoint.pt --folder DIR [--out scores.csv]
                         [--batch-size 256] [--device auto]

Every image file below ``DIR`` (sorted, recursive) gets one score, written as ``path,score`` rows (path
relative to ``DIR``; higher = more anomalous, the trainer's ``anomaly_scores``) to ``--out`` (default
``DIR_scores.csv`` next to the folder). The checkpoint of an ``ad``/``ad_sweep`` cell carries what scoring
needs (:func:`scoring_meta`): the network config and weights, the trainer config and its saved states (e.g.
the DSVDD centre) and the cell's effective preprocessing (normal-class normalisation constants included).
An ``ms_mode`` filter on the test images is applied when it covers both test parts (unlabeled images
cannot be told apart); a filter on only one of them is an error. Bad input (no images, an unreadable
checkpoint, a checkpoint without scoring information) is a one-line error, exit 2, before the CSV exists.
"""

from __future__ import annotations

import argparse
import csv
import pickle
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms as T

from ...config import to_plain
from ...datasets.imglist import SkipCounter
from ...datasets.transforms import build_transform, image_mode
from ...errors import CheckpointError, ConfigError, DataError
from ...networks import NETWORKS
from ...networks.checkpoint import load_checkpoint
from ...synthesizers.fourier_filter import FourierTransform, MSMode
from ...synthesizers.oe_images import FolderDataset
from ...synthesizers.pixels import PixelSpace
from ...trainers import TRAINERS, split_trainer_config
from ...trainers.trainer import TrainContext, as_trainer
from ...utils.io import check_replaceable, write_with
from ...utils.runtime import resolve_device


def scoring_meta(bench, cfg, engine) -> dict:
    """Checkpoint meta for :func:`score_folder`: preprocessing, trainer config, trainer states."""
    states = {name: obj.state_dict() for name, obj in engine.ctx.states.items()}
    modules = {name: m.module.state_dict() for name, m in engine.ctx.modules.items()}
    return {"preprocessor": dict(bench.preprocessor), "trainer_config": to_plain(cfg.trainer),
            "trainer_states": states, "trainer_modules": modules}


def scorer_of(trainer, net):
    """``images -> (scores [B], heatmaps [B, H, W] or None)``; ConfigError when neither can score."""
    if callable(getattr(trainer, "anomaly_scores", None)):
        return trainer.anomaly_scores
    if callable(getattr(net, "heat", None)):
        return net.heat
    raise ConfigError(f"ad: trainer {type(trainer).__name__} has no anomaly_scores(images) and the network no heat(x); "
                      f"the AD pipeline needs a per-sample anomaly score")


def load_scorer(checkpoint: Path, device: torch.device):
    """(scorer images -> (scores, heatmaps), preprocessor, meta) rebuilt from an AD cell's checkpoint."""
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint}: checkpoint not found (expected RUN/normal_<c>/seed_<s>/checkpoint.pt)")
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{checkpoint}: not a readable checkpoint ({type(exc).__name__})") from None
    meta = blob.get("meta", {}) if isinstance(blob, dict) else {}
    if not isinstance(blob, dict) or not blob.get("network") or "trainer_config" not in meta:
        raise CheckpointError(f"{checkpoint}: no scoring information (network, trainer_config, preprocessor); "
                              f"it was not written by the ad pipeline of this version -- retrain the cell")
    net = NETWORKS.build(dict(blob["network"]))
    load_checkpoint(checkpoint, net)
    net = net.to(device).eval()
    _, method = split_trainer_config(meta["trainer_config"])
    trainer = as_trainer(TRAINERS.build(method))
    ctx = TrainContext(device=device, num_classes=1, epochs=0, steps_per_epoch=1)
    trainer.setup(net, ctx)
    for name, state in (meta.get("trainer_states") or {}).items():
        if name in ctx.states:
            ctx.states[name].load_state_dict(state)
    for name, state in (meta.get("trainer_modules") or {}).items():
        if name in ctx.modules:
            ctx.modules[name].module.load_state_dict(state)
    return scorer_of(trainer, net), dict(meta["preprocessor"]), meta


def folder_transform(pre: dict[str, Any]):
    """The cell's test transform, with its ms_mode filter when it covers both test parts."""
    transform = build_transform(pre, train=False)
    ms = MSMode.from_config(pre.get("ms_mode"), int(pre.get("image_size", 32)))
    if ms is None or ms.magnitude == 0:
        return transform
    test_parts = {"test_nominal", "test_anomalous"} & set(ms.parts)
    if len(test_parts) == 1:
        raise ConfigError(f"ad-score: the cell filtered only {test_parts.pop()} (ms_mode); unlabeled images cannot "
                          f"be assigned to one test part")
    if not test_parts:
        return transform
    return T.Compose([transform, FourierTransform(PixelSpace(pre), ms.mode, ms.magnitude)])


def score_folder(checkpoint: str | Path, folder: str | Path, out: str | Path | None = None,
                 batch_size: int = 256, device: str = "auto") -> Path:
    """Write ``path,score`` for every image below ``folder``; returns the CSV path (see the module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"ad-score --folder: {folder} is not a directory")
    out = Path(out) if out else folder.parent / f"{folder.name}_scores.csv"
    check_replaceable(out, "ad-score --out")  # before the scoring, not after it
    dev = resolve_device(device)
    scorer, pre, _ = load_scorer(Path(checkpoint), dev)
    ds = FolderDataset(folder, folder_transform(pre), image_mode(pre))
    if len(ds) == 0:
        raise DataError(f"ad-score --folder: no image files below {folder}")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=SkipCounter())
    scores = []
    with torch.no_grad():
        for images, _, _ in loader:
            s, _ = scorer(images.to(dev))
            scores += s.detach().double().cpu().tolist()

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "score"])
            for entry, s in zip(ds.entries, scores):
                w.writerow([entry.path, repr(float(s))])
    write_with(out, write)
    return out


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext ad-score",
                                     description="Score an unlabeled image folder with a trained AD cell "
                                                 "(one row per image; higher = more anomalous).")
    parser.add_argument("--checkpoint", required=True, help="RUN/normal_<c>/seed_<s>/checkpoint.pt of an ad run")
    parser.add_argument("--folder", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", default=None, help="CSV to write (default: <folder>_scores.csv)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(list(argv))
    if args.batch_size < 1:
        raise ConfigError(f"ad-score --batch-size: expected an integer >= 1, got {args.batch_size}")
    out = score_folder(args.checkpoint, args.folder, args.out, args.batch_size, args.device)
    print(out)
    return 0
