"""``openood-ext bench forward``: test_ood's forward pass over a split against a plain torch loop over the
same network and the same images, measured in one run.

    openood-ext bench forward [--benchmark cifar10] [--split id_test] [--images 2000] [--network resnet18_32x32]
                              [--width 64] [--batch-size 256] [--rounds 4] [--device auto]

Ours: ``OutputStore.get(split)`` as test_ood calls it (cache disabled, so every call is a real pass):
its loader from the config, ``extract_outputs`` (eval mode, logits + penultimate features to CPU float32,
labels, the last linear layer), precision/compile wrappers at their defaults (fp32, off). Plain: a
DataLoader over the same dataset (same batch size, ``num_workers=0``) and ``net(x, return_feature=True)``
under ``torch.no_grad()``, outputs kept on the CPU. Same network object, untrained weights (the speed does
not depend on them). Alternating (ABBA) ``--rounds`` times after a warm-up; medians of images per second
and ours / plain (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..networks import NETWORKS
from ..networks.checkpoint import save_checkpoint
from ..pipelines.outputs import OutputStore
from ..utils.runtime import get_logger, resolve_device
from ..utils.timing import alternate
from .imglist import benchmark_subset


class _BenchContext:
    """What OutputStore reads from a run context (no run directory is made)."""

    def __init__(self, device):
        self.device, self.timings, self.log = device, {}, get_logger()

    def timed(self, label):
        import contextlib
        return contextlib.nullcontext()


def bench_forward(benchmark: str = "cifar10", split: str = "id_test", images: int = 2000,
                  network: str = "resnet18_32x32", width: int = 64, batch_size: int = 256, rounds: int = 4,
                  device: str = "auto") -> dict:
    dev = resolve_device(device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        bench, sub = benchmark_subset(benchmark, split, images, Path(tmp))
        spec = {"name": network, "num_classes": bench.num_classes, **({"width": width} if width else {})}
        net = NETWORKS.build(spec).to(dev).eval()
        ckpt = Path(tmp) / "net.pt"
        save_checkpoint(ckpt, net, spec)
        cfg = OmegaConf.create({"cache_dir": None, "batch_size": batch_size, "num_workers": 0, "network": spec})
        store = OutputStore(net, bench, ckpt, cfg, _BenchContext(dev))
        n = len(bench.dataset(sub))

        def ours() -> float:
            store.memo.clear()
            t0 = time.perf_counter()
            out = store.get(sub)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            assert len(out) == n
            return n / (time.perf_counter() - t0)

        def plain() -> float:
            loader = torch.utils.data.DataLoader(bench.dataset(sub), batch_size=batch_size, shuffle=False)
            logits, feats = [], []
            t0 = time.perf_counter()
            net.eval()
            with torch.no_grad():
                for x, _ in loader:
                    lo, f = net(x.to(dev), return_feature=True)
                    logits.append(lo.cpu())
                    feats.append(f.cpu())
            torch.cat(logits), torch.cat(feats)
            return n / (time.perf_counter() - t0)

        a, b = alternate(ours, plain, rounds)
    o, p = statistics.median(a), statistics.median(b)
    return {"device": str(dev), "benchmark": benchmark, "split": split, "images": n, "network": f"{network} width {width}",
            "batch_size": batch_size, "rounds": rounds, "ours_images_per_s": round(o, 1),
            "plain_images_per_s": round(p, 1), "ratio_ours_over_plain": round(o / p, 3),
            "ours_runs": [round(v, 1) for v in a], "plain_runs": [round(v, 1) for v in b], "torch": torch.__version__}


def main(argv) -> int:
    parser = argparse.ArgumentParser(prog="openood-ext bench forward", description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", default="cifar10")
    parser.add_argument("--split", default="id_test")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--network", default="resnet18_32x32")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    r = bench_forward(args.benchmark, args.split, args.images, args.network, args.width, args.batch_size,
                      args.rounds, args.device)
    print(f"device {r['device']}, {r['network']}, {r['benchmark']} {r['split']}: {r['images']} images, "
          f"batch {r['batch_size']}, {r['rounds']} alternating rounds (torch {r['torch']})")
    print(f"ours (test_ood's OutputStore pass): {r['ours_images_per_s']} img/s (runs {r['ours_runs']})")
    print(f"plain torch loop: {r['plain_images_per_s']} img/s (runs {r['plain_runs']})")
    print(f"ours / plain = {r['ratio_ours_over_plain']:.3f} (goal >= 0.95)")
    return 0
