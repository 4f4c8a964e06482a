"""``openood-ext bench train``: images per second of the training engine against a plain hand-written
torch loop over the same network, data, optimizer, schedule and batch size, measured in one run.

    openood-ext bench train [--network resnet18_32x32] [--width 16] [--images 1024] [--batch-size 128]
                            [--rounds 6] [--device auto]

Data are in-memory random 32x32 images (so the loader does not dominate); both loops start from the same
weights. After one warm-up epoch each, engine and plain epochs alternate ``--rounds`` times (in ABBA
order, since the second loop of a pair runs slightly faster here); the medians
of images per second and their ratio (engine / plain, goal >= 0.95) are printed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from ..networks import NETWORKS
from ..trainers import Engine, Trainer, split_trainer_config
from ..trainers.optim import build_optimizer, build_scheduler
from ..utils.runtime import resolve_device


class _CrossEntropyOnly(Trainer):
    """The same objective as the plain loop (no accuracy term), so only the loop's overhead differs."""

    def training_step(self, batch):
        return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}


def bench_train(network: str = "resnet18_32x32", width: int = 16, images: int = 1024, batch_size: int = 128,
                rounds: int = 6, device: str = "auto", seed: int = 0) -> dict:
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(images, 3, 32, 32, generator=g), torch.randint(0, 10, (images,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    spec = {"name": "bench", "epochs": 2 * rounds + 2, "batch_size": batch_size,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "scheduler": {"name": "cosine", "interval": "step"}}
    settings, _ = split_trainer_config(spec)
    torch.manual_seed(seed)
    net_engine = NETWORKS.build({"name": network, "num_classes": 10, "width": width}).to(dev)
    net_plain = copy.deepcopy(net_engine)
    engine = Engine(_CrossEntropyOnly(), net_engine, loader, settings, device=dev, num_classes=10, seed=seed)
    opt = build_optimizer([{"params": list(net_plain.parameters())}], settings.optimizer)
    sched = build_scheduler(opt, settings.scheduler, settings.epochs, len(loader))

    def plain_epoch() -> float:
        net_plain.train()
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            loss = F.cross_entropy(net_plain(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return images / (time.perf_counter() - t0)

    def engine_epoch(epoch: int) -> float:
        t0 = time.perf_counter()
        engine.run_epoch(epoch)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return images / (time.perf_counter() - t0)

    engine_epoch(0), plain_epoch()  # warm-up
    eng, plain = [], []
    for r in range(rounds):  # ABBA order: whichever runs first in a round is not always the same loop
        if r % 2 == 0:
            eng.append(engine_epoch(r + 1))
            plain.append(plain_epoch())
        else:
            plain.append(plain_epoch())
            eng.append(engine_epoch(r + 1))
    e, p = statistics.median(eng), statistics.median(plain)
    return {"device": str(dev), "network": f"{network} width {width}", "images": images, "batch_size": batch_size,
            "rounds": rounds, "engine_images_per_s": round(e, 1), "plain_images_per_s": round(p, 1),
            "ratio_engine_over_plain": round(e / p, 3), "engine_runs": [round(v, 1) for v in eng],
            "plain_runs": [round(v, 1) for v in plain], "torch": torch.__version__}


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="resnet18_32x32")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    r = bench_train(args.network, args.width, args.images, args.batch_size, args.rounds, args.device)
    print(f"device {r['device']}, {r['network']}, {r['images']} images, batch {r['batch_size']}, "
          f"{r['rounds']} alternating rounds (torch {r['torch']})")
    print(f"engine: {r['engine_images_per_s']} img/s (runs {r['engine_runs']})")
    print(f"plain torch loop: {r['plain_images_per_s']} img/s (runs {r['plain_runs']})")
    print(f"engine / plain = {r['ratio_engine_over_plain']:.3f} (goal >= 0.95)")
    return 0
