"""``openood-ext bench oaml`` (or ``python -m openood_ext.bench.oaml``): OAML costs.

* ``generation``: Stable-Diffusion outlier generation throughput (images per second, decoding and
  saving included) with :func:`~openood_ext.synthesizers.sd_pipeline.ensure_generated` into a temporary
  folder; ``--model tiny-random`` (default, CPU-friendly) or a local SD directory (``--size 512 --steps 50``
  for the paper's setting on a GPU).
* ``step``: the time of one optimizer step of ``oaml`` vs ``base`` (cross-entropy) on the same student
  and batch, and their ratio. The OAML step includes the frozen teacher's forward pass, the projection,
  both CLUB estimators (text pool ``--text-dim``, latent pool ``--latent-dim`` with ``--latent-hidden``)
  and their updates. Median of ``--repeats`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..networks import NETWORKS
from ..synthesizers.sd_pipeline import SDConfig, ensure_generated
from ..trainers import TRAINERS, Batch, TrainContext
from ..trainers.oaml import OAMLTrainer
from ..utils.io import write_text
from ..utils.timing import median_time


def bench_generation(model="tiny-random", images_per_class=2, classes=("cat", "dog"), steps=3, size=16,
                     device="cpu") -> dict:

    cfg = SDConfig(model=model, classes=list(classes), id_features="synthetic", K=5, select=4, candidates=20,
                   keep=2, repeats=2, images_per_class=images_per_class, chunk=min(3, images_per_class),
                   steps=steps, size=size, save_size=min(size, 256))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = ensure_generated(Path(tmp) / "gen", cfg, device)
        total = time.perf_counter() - t0
    return {"model": model, "images": out["generated"], "steps": steps, "size": size, "device": str(device),
            "decode_seconds": out["seconds"], "images_per_s": out["generated"] / out["seconds"],
            "total_seconds_with_setup": total}


class _Pool:
    def __init__(self, n, dim, seed):
        self.pool = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
        self.dim = dim
        self.ctx = None

    def draw_features(self, n, g):
        return self.pool[torch.randperm(len(self.pool), generator=g)[:n]]


def bench_step(width=16, batch=32, repeats=3, text_dim=768, latent_dim=16384, latent_hidden=(8192, 4096, 256),
               teacher="tiny", device="cpu") -> dict:

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(dev)
    y = (torch.arange(batch) % 10).to(dev)

    def student():
        torch.manual_seed(0)
        return NETWORKS.build({"name": "resnet18_32x32", "num_classes": 10, "width": width}).to(dev)

    net = student()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def base_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t_base = median_time(base_step, repeats)

    tiny = {"model": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    spec = tiny if teacher == "tiny" else {"model": "vit_base_patch16_224", "img_size": 224}
    with tempfile.TemporaryDirectory() as tmp:
        t_net = NETWORKS.build({"name": "timm_vit", "num_classes": 10, **spec})
        torch.save({"state_dict": t_net.state_dict()}, Path(tmp) / "t.pt")
        trainer = TRAINERS.build({"name": "oaml", "teacher": {**spec, "checkpoint": str(Path(tmp) / "t.pt")},
                                  "latent_mu_hidden": list(latent_hidden)})
        latent = _Pool(max(batch, 150), latent_dim, 1)
        trainer._latent_source = lambda ctx: latent  # bench: random pools instead of generated outliers
        ctx = TrainContext(device=dev, num_classes=10, epochs=1, steps_per_epoch=1, outliers=_Pool(max(batch, 1000), text_dim, 0))
        net2 = student()
        OAMLTrainer.setup(trainer, net2, ctx)
        params = [{"params": list(net2.parameters())}] + [
            {"params": list(m.module.parameters()), "lr": m.lr or 0.01} for m in ctx.modules.values() if m.trainable]
        opt2 = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        step = [0]

        def oaml_step():
            opt2.zero_grad(set_to_none=True)
            trainer.training_step(Batch(x, y, None, 0, step[0], step[0]))["loss"].backward()
            opt2.step()
            step[0] += 1
            if dev.type == "cuda":
                torch.cuda.synchronize()

        t_oaml = median_time(oaml_step, repeats)
    return {"width": width, "batch": batch, "teacher": teacher, "latent_dim": latent_dim,
            "latent_hidden": list(latent_hidden), "device": str(dev), "base_step_s": t_base,
            "oaml_step_s": t_oaml, "ratio": t_oaml / t_base}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="openood-ext bench oaml", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=["all", "generation", "step"])
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--images-per-class", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--latent-dim", type=int, default=16384)
    p.add_argument("--latent-hidden", default="8192,4096,256")
    p.add_argument("--teacher", choices=["tiny", "vit_b16"], default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("-o", "--output")
    a = p.parse_args(argv)
    out = {}
    if a.what in ("all", "generation"):
        out["generation"] = bench_generation(a.model, a.images_per_class, steps=a.steps, size=a.size, device=a.device)
        gen = out["generation"]
        print(f"generation ({gen['model']}, {gen['size']} px, {gen['steps']} steps, {gen['device']}): "
              f"{gen['images']} images, {gen['images_per_s']:.3f} images/s")
    if a.what in ("all", "step"):
        hidden = tuple(int(h) for h in a.latent_hidden.split(","))
        out["step"] = s = bench_step(a.width, a.batch, a.repeats, latent_dim=a.latent_dim, latent_hidden=hidden,
                                     teacher=a.teacher, device=a.device)
        print(f"step (resnet18_32x32 width {s['width']}, batch {s['batch']}, teacher {s['teacher']}, latent "
              f"{s['latent_dim']} -> {s['latent_hidden']}, {s['device']}): base {s['base_step_s'] * 1e3:.1f} ms, "
              f"oaml {s['oaml_step_s'] * 1e3:.1f} ms, ratio {s['ratio']:.2f}")
    if a.output:
        write_text(a.output, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
