"""``openood-ext bench ceiling``: the synthetic-data ceiling of a training step, images/s.

The engine trains the network with plain cross-entropy on random tensors that are already on the device
(no decoding, augmentation, host-to-device copy or loader), so the figure is what the step itself can
do. A real epoch's images/s divided by it says how much of the device the input pipeline leaves
unused (``--real-images-per-s`` prints that ratio)::

    openood-ext bench ceiling --network resnet18_32x32 --batch-size 128 --precision bf16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..networks import NETWORKS
from ..trainers import Engine, Trainer, split_trainer_config
from ..utils.runtime import resolve_device


class _CrossEntropy(Trainer):
    def training_step(self, batch):
        return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}


def bench_ceiling(network: str = "resnet18_32x32", width: int = 64, num_classes: int = 10, image_size: int = 32,
                  batch_size: int = 128, steps: int = 50, precision: str = "fp32", channels_last: bool = False,
                  device: str = "auto", seed: int = 0) -> dict:
    """Images/s of ``steps`` engine steps (after ``steps // 5`` of warm-up) on device-resident random batches."""
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(batch_size, 3, image_size, image_size, generator=g).to(dev),
                torch.randint(0, num_classes, (batch_size,), generator=g).to(dev)) for _ in range(4)]
    warm = max(1, steps // 5)

    class Cycle:  # the engine's loader: `steps` batches cycling over the device-resident ones
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __iter__(self):
            return (batches[i % len(batches)] for i in range(self.n))

    spec = {"name": "bench", "epochs": 2, "batch_size": batch_size, "precision": precision,
            "channels_last": channels_last,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "scheduler": {"name": "constant"}}
    settings, _ = split_trainer_config(spec)
    torch.manual_seed(seed)
    spec_net = {"name": network, "num_classes": num_classes}
    if width:
        spec_net["width"] = width
    net = NETWORKS.build(spec_net)
    engine = Engine(_CrossEntropy(), net, Cycle(warm), settings, device=dev, num_classes=num_classes, seed=seed)
    engine.run_epoch(0)
    engine.loader, engine.batches_per_epoch = Cycle(steps), steps
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    engine.run_epoch(1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"device": str(dev), "network": network, "width": width, "batch_size": batch_size, "steps": steps,
            "precision": precision, "channels_last": channels_last,
            "images_per_s": round(steps * batch_size / seconds, 1), "torch": torch.__version__}


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="resnet18_32x32")
    parser.add_argument("--width", type=int, default=64, help="network width (0: the network's default)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--real-images-per-s", type=float, default=None,
                        help="a real epoch's images/s: print its ratio to the ceiling")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    r = bench_ceiling(args.network, args.width, args.num_classes, args.image_size, args.batch_size, args.steps,
                      args.precision, args.channels_last, args.device)
    if args.real_images_per_s is not None:
        r["real_images_per_s"] = args.real_images_per_s
        r["real_over_ceiling"] = round(args.real_images_per_s / r["images_per_s"], 3)
    line = (f"ceiling: {r['images_per_s']:.0f} images/s ({r['network']}, batch {r['batch_size']}, {r['precision']}"
            f"{', channels_last' if r['channels_last'] else ''}, {r['device']})")
    if "real_over_ceiling" in r:
        line += f"; real epoch {r['real_images_per_s']:.0f} images/s = {r['real_over_ceiling']:.2f} of the ceiling"
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=2) + "\n")
    return 0
