"""NPOS parity: this toolkit against the authors' code and OpenOOD v1.5's npos trainer, step for step.

    python scripts/parity/npos.py --published /work/peers/npos [--openood /work/peers/OpenOOD] \\
        [--golden tests/trainers/golden/npos_published.pt]

``--published``: a checkout of deeplearning-wisc/npos @ 583c06db0876c3d1c4e5a9a5371cc3a5cb916255 (its
``training_from_scratch/{KNN,losses,util}.py`` and the argparse defaults of ``train_CIFAR10.py`` with
``train_npos_cifar10.sh``). ``--openood``: Jingkang50/OpenOOD @ 3c35632ee91b54b09d1f085d04f94744cece7d0b
(``openood/trainers/npos_trainer.py``, ``configs/pipelines/train/train_npos.yml``,
``scripts/ood/npos/cifar10_train_npos.sh``). Their code is imported from those paths, never copied; CPU
shims (``_common.py``) stand in for CUDA and GPU faiss. Both sides get the same tensors, weights and
random draws (the Gaussian G and the boundary-point picks the published code draws are replayed into
``npos_sample(noise=..., picks=...)``). Prints a markdown table per source: item, measured max |difference|
and the verdict (equal / equal with switch X / documented deviation or published defect).

``--golden`` also writes the published outputs for fixed inputs to a .pt file that
``tests/trainers/test_npos_golden.py`` checks without the checkouts.
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import re
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from _common import (  # noqa: E402
    CpuTorch, SizedLoader, Table, cpu_cuda, faiss_gpu_shim, load_file, maxdiff, stub_modules,
)

from openood_ext.config import load_config  # noqa: E402
from openood_ext.synthesizers.npos import NPOSParams, NPOSSynthesizer, npos_sample  # noqa: E402
from openood_ext.trainers.npos import compactness_loss, dispersion_loss, ema_prototypes  # noqa: E402
from openood_ext.trainers.optim import check_schedule_spec, schedule_factor  # noqa: E402

SAMPLER = dict(C=3, Q=40, D=16, K=6, select=8, pick=2, sample_from=30, keep=4, sigma=0.1)


# ------------------------------------------------------------------------------------------ inputs
def sampler_inputs(seed: int = 0):
    s = SAMPLER
    g = torch.Generator().manual_seed(seed)
    queues = torch.randn(s["C"], s["Q"], s["D"], generator=g) + 2.0 * torch.randn(s["C"], 1, s["D"], generator=g)
    noise = torch.randn(s["sample_from"], s["D"], generator=g)
    return queues, noise


def published_sampler(generate_outliers, faiss, queues, noise, np_seed: int = 0):
    """The published per-class loop with one G shared by the classes; returns (outliers, picks [C, pick]).
    The picks are replayed from numpy's state (generate_outliers draws a permutation, then the picks)."""
    s = SAMPLER
    np.random.seed(np_seed)
    index = faiss.GpuIndexFlatL2(None, s["D"])
    outs, picks = [], []
    for c in range(s["C"]):
        state = np.random.get_state()
        np.random.choice(s["Q"], s["Q"], replace=False)
        picks.append(np.random.choice(s["select"], s["pick"], replace=False))
        np.random.set_state(state)
        outs.append(generate_outliers(queues[c].clone(), input_index=index, negative_samples=noise.clone(),
                                      ID_points_num=s["keep"], K=s["K"], select=s["select"], cov_mat=s["sigma"],
                                      sampling_ratio=1.0, pic_nums=s["pick"], depth=s["D"]))
    return torch.cat(outs), torch.as_tensor(np.stack(picks))


def ours_sampler(queues, noise, picks, ranking: str, backend: str):
    s = SAMPLER
    params = NPOSParams(K=s["K"], select=s["select"], pick=s["pick"], candidates=s["sample_from"], keep=s["keep"],
                        sigma=s["sigma"])
    return npos_sample(queues, params, noise=noise, picks=picks, ranking=ranking, backend=backend).flat()[0]


def loss_inputs(seed: int = 1, C: int = 4, n: int = 12, H: int = 8):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, H, generator=g), dim=1)
    labels = torch.randint(C, (n,), generator=g)
    proto = F.normalize(torch.randn(C, H, generator=g), dim=1)
    return z, labels, proto


def published_losses(losses_mod, z, labels, proto, proto_m=0.95, temp=0.1):
    C, H = proto.shape
    args = types.SimpleNamespace(n_cls=C, feat_dim=H, proto_m=proto_m)
    model = nn.Identity()
    disp_mod = losses_mod.DispLoss(args, model, [(z.detach(), labels)], temperature=temp)
    disp_mod.prototypes = proto.clone()
    comp_mod = losses_mod.CompLoss(args, temperature=temp)
    zz = z.clone().requires_grad_(True)
    disp = disp_mod(zz, labels)
    comp = comp_mod(zz, disp_mod.prototypes, labels)
    (g_disp,) = torch.autograd.grad(disp, zz, retain_graph=True)
    (g_comp,) = torch.autograd.grad(comp, zz)
    init = F.normalize(torch.stack([z[labels == c].sum(0) / max(1, int((labels == c).sum())) for c in range(C)]), dim=1)
    return dict(disp=disp.detach(), comp=comp.detach(), g_disp=g_disp, g_comp=g_comp,
                proto_after=disp_mod.prototypes.detach().clone(), init_ref=init)


def ours_losses(z, labels, proto, proto_m=0.95, temp=0.1):
    zz = z.clone().requires_grad_(True)
    mu = ema_prototypes(proto.clone(), zz, labels, proto_m)
    disp = dispersion_loss(mu, temp, 0.1)
    comp = compactness_loss(zz, mu.detach(), labels, temp, 0.07)
    (g_disp,) = torch.autograd.grad(disp, zz, retain_graph=True)
    (g_comp,) = torch.autograd.grad(comp, zz)
    return dict(disp=disp.detach(), comp=comp.detach(), g_disp=g_disp, g_comp=g_comp, proto_after=mu.detach())


# ------------------------------------------------------------------------------------------ recipes
def argparse_defaults(path: Path) -> dict:
    """``add_argument('--name', default=...)`` defaults of a published training script (read, not run)."""
    out = {}
    for call in re.findall(r"add_argument\((.*?)\)\n", path.read_text(), flags=re.S):
        names = re.findall(r"'--?([\w-]+)'|\"--?([\w-]+)\"", call)
        m = re.search(r"default\s*=\s*([^,]+?)\s*(?:,|$)", call)
        if names and m:
            try:
                value = ast.literal_eval(m.group(1))
            except (ValueError, SyntaxError):
                continue
            for a, b in names:
                out[(a or b).replace("-", "_")] = value
    if "cosine" in out or "'--cosine', action='store_false'" in path.read_text():
        out["cosine"] = True
    return out


def shell_overrides(path: Path) -> dict:
    out = {}
    for k, v in re.findall(r"--([\w.-]+)\s+([^\s\\-][^\s\\]*)", path.read_text()):
        try:
            out[k.replace("-", "_")] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k.replace("-", "_")] = v
    return out


def recipe_rows(table: Table, published: dict, ours: dict) -> None:
    for item, pub, mine in [(k, published.get(k), ours.get(k)) for k in ours]:
        same = pub is not None and (pub == mine or (isinstance(pub, float) and isinstance(mine, (int, float))
                                                     and math.isclose(pub, mine, rel_tol=1e-9)))
        table.add(f"recipe `{item}`: published {pub}, ours {mine}", "0" if same else "differs",
                  "equal" if same else ours.get("_why", {}).get(item, "DIFFERS"))


# ------------------------------------------------------------------------------------------ OpenOOD step
class TinyBody(nn.Module):
    """A BN-free backbone: raw penultimate features [B, D] from [B, 3, 4, 4]; ``forward`` = ``features``
    (OpenOOD's NPOSNet replaces the backbone's fc by the identity)."""

    def __init__(self, D=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, D))
        self.feature_size = self.feature_dim = D

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.body(x)


def both_net(C=3, D=16, H=8, seed=0):
    """Our NPOSNet (``features``/``project``/``open_logit``) that OpenOOD's trainer can also drive
    (``backbone``/``head``/``mlp``, forward = the normalised projection)."""
    from openood_ext.networks.npos_net import NPOSNet

    class Both(NPOSNet):
        def forward(self, x, return_feature=False):
            return self.project(self.features(x))

    torch.manual_seed(seed)
    return Both(TinyBody(D), D, C, head_dim=H, mlp_hidden=H)


def openood_config(C, Q, E, start, lr=0.1):
    ns = types.SimpleNamespace
    return ns(num_gpus=1, num_machines=1,
              dataset=ns(num_classes=C, train=ns(batch_size=6)),
              network=ns(feat_dim=8),
              trainer=ns(trainer_args=ns(proto_m=0.95, temp=0.1, sample_number=Q, sample_from=20, start_epoch_KNN=start,
                                         K=4, cov_mat=0.1, select=5, ID_points_num=3, pick_nums=2, w_disp=0.5,
                                         w_comp=1, loss_weight=0.1)),
              optimizer=ns(num_epochs=E, lr=lr, momentum=0.9, weight_decay=1e-4, warm=True, cosine=True,
                           lr_decay_rate=0.1, lr_decay_epochs=[30, 50, 120], mlp_decay_rate=0.1))


def openood_run(trainer_mod, C=3, Q=12, E=3, start=2, steps=6, seed=0):
    """OpenOOD's NPOSTrainer over E epochs of ``steps`` batches (6 images x 2 views, 2 per class), with
    recorders on the sampler, the prototypes and the optimizer step."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        y = torch.arange(6) % C
        x = torch.randn(6, 2, 3, 4, 4, generator=g) + y[:, None, None, None, None].float()
        batches.append({"data": [x[:, 0], x[:, 1]], "label": y})
    val = [{"data": torch.randn(9, 3, 4, 4, generator=g), "label": torch.arange(9) % C}]
    net = both_net(C)
    init_state = copy.deepcopy(net.state_dict())
    cfg = openood_config(C, Q, E, start)
    torch.manual_seed(seed)
    np.random.seed(seed)
    tr = trainer_mod.NPOSTrainer(net, SizedLoader(batches), val, cfg)
    rec = {"calls": [], "steps": [], "lr": [], "init_proto": tr.criterion_disp.prototypes.clone(),
           "init_state": init_state, "batches": batches}
    orig_gen = trainer_mod.generate_outliers

    def gen(ID, input_index, negative_samples, **kw):
        state = np.random.get_state()
        np.random.choice(ID.shape[0], ID.shape[0], replace=False)
        pick = np.random.choice(kw["select"], int(kw["pic_nums"]), replace=False)
        np.random.set_state(state)
        out = orig_gen(ID, input_index, negative_samples, **kw)
        rec["calls"].append(dict(ID=ID.clone(), G=negative_samples.clone(), pick=torch.as_tensor(pick), out=out.clone(),
                                 step=len(rec["steps"])))
        return out
    trainer_mod.generate_outliers = gen
    disp = tr.criterion_disp
    orig_fwd = disp.forward

    def disp_forward(features, labels):
        rec["proto_before"] = disp.prototypes.detach().clone()
        return orig_fwd(features, labels)
    disp.forward = disp_forward
    opt = tr.optimizer
    orig_step = opt.step

    def step(*a, **k):
        rec["lr"].append(opt.param_groups[0]["lr"])
        rec.setdefault("group_lrs", []).append([g["lr"] for g in opt.param_groups])
        rec["steps"].append(dict(state=copy.deepcopy(net.state_dict()), proto_before=rec["proto_before"],
                                 calls=len(rec["calls"]),
                                 grads={n: (p.grad.clone() if p.grad is not None else None)
                                        for n, p in net.named_parameters()}))
        return orig_step(*a, **k)
    opt.step = step
    try:
        for epoch_idx in range(1, E + 1):
            tr.train_epoch(epoch_idx)
    finally:
        trainer_mod.generate_outliers = orig_gen
    return rec, cfg


def ours_step(state, proto_before, batch, queues=None, noise=None, picks=None, C=3):
    """Our NPOS trainer's loss terms and gradients on one OpenOOD step: the same weights ``state``, batch,
    prototypes and, when it synthesised, the same post-push queues [C, Q, D], G and picks [C, pick]."""
    from openood_ext.trainers import TRAINERS, Batch, TrainContext

    net = both_net(C)
    net.load_state_dict(state)
    src = NPOSSynthesizer(queue_size=12, K=4, select=5, pick=2, candidates=20, keep=3, start_epoch=0, num_classes=C,
                          backend="torch", ranking="published")
    src.update = lambda f, y: None                  # the queue is OpenOOD's, after this batch's push
    src.ready = lambda epoch: queues is not None
    src.synthesize = lambda: npos_sample(queues, src.params, noise=noise, picks=picks, backend="torch",
                                         ranking="published").flat()[0]
    trainer = TRAINERS.build({"name": "npos", "proto_m": 0.95, "temperature": 0.1, "base_temperature": 0.07,
                              "w_disp": 0.5, "w_comp": 1.0, "w_reg": 0.1, "prototype_init": "batch"})
    ctx = TrainContext(device=torch.device("cpu"), num_classes=C, epochs=1, steps_per_epoch=1, outliers=src)
    trainer.setup(net, ctx)
    trainer.prototypes.value = proto_before.clone()
    x = torch.stack(batch["data"], dim=1)
    net.train()
    net.zero_grad()
    terms = trainer.training_step(Batch(x, batch["label"], None, 0, 0, 0))
    terms["loss"].backward()
    grads = {n: p.grad for n, p in net.named_parameters() if not n.startswith("fc.")}
    return terms, grads


# ------------------------------------------------------------------------------------------ main
def run_published(root: Path, golden: dict) -> Table:
    t = Table(f"NPOS vs deeplearning-wisc/npos @ 583c06d ({root})")
    src = root / "training_from_scratch"
    stub_modules("umap", "tensorboard_logger")
    faiss = faiss_gpu_shim()
    sys.path.insert(0, str(src))
    knn = load_file("npos_published_KNN", src / "KNN.py")
    losses = load_file("npos_published_losses", src / "losses.py")
    losses.torch = CpuTorch()
    util = load_file("npos_published_util", src / "util.py")

    queues, noise = sampler_inputs()
    pub, picks = published_sampler(knn.generate_outliers, faiss, queues, noise)
    for backend in ("faiss", "torch"):
        t.equal(f"sampler outliers (3 classes, pick 2, shared G, fixed picks), {backend} backend", 
                maxdiff(ours_sampler(queues, noise, picks, "published", backend), pub), 1e-5,
                switch="`ranking: published`")
    intended = ours_sampler(queues, noise, picks, "intended", "faiss")
    same = sum(any(torch.allclose(r, p, atol=1e-6) for p in pub) for r in intended) / len(intended)
    t.add("sampler outliers, `ranking: intended` (default)", f"{same:.0%} of rows shared",
          "documented deviation (published reshape mixes boundary points' candidates)")
    golden["sampler"] = dict(queues=queues, noise=noise, picks=picks, published=pub, params=SAMPLER)

    z, labels, proto = loss_inputs()
    p, o = published_losses(losses, z, labels, proto), ours_losses(z, labels, proto)
    t.equal("L_disp (DispLoss, EMA prototypes m 0.95, tau 0.1)", maxdiff(o["disp"], p["disp"]), 1e-6)
    t.equal("dL_disp/dz (graph through this batch's EMA updates)", maxdiff(o["g_disp"], p["g_disp"]), 1e-6)
    t.equal("prototypes after the batch", maxdiff(o["proto_after"], p["proto_after"]), 1e-6)
    t.equal("L_comp (CompLoss, tau 0.1, base 0.07)", maxdiff(o["comp"], p["comp"]), 1e-6)
    t.equal("dL_comp/dz (prototypes detached)", maxdiff(o["g_comp"], p["g_comp"]), 1e-6)
    golden["losses"] = dict(z=z, labels=labels, proto=proto, **{k: v for k, v in p.items() if k != "init_ref"})

    # score: eval_ood_detection.py knn(): faiss IndexFlatL2 on F.normalize(penultimate), score -D[:, -1]
    g = torch.Generator().manual_seed(3)
    ftrain, ftest = torch.randn(200, 16, generator=g), torch.randn(50, 16, generator=g)
    index = faiss.IndexFlatL2(16)
    index.add(F.normalize(ftrain, dim=1).numpy())
    D, _ = index.search(F.normalize(ftest, dim=1).numpy(), 50)
    pub_score = -D[:, -1]
    from openood_ext.features import NetOutputs
    from openood_ext.postprocessors import POSTPROCESSORS
    outs = lambda f: NetOutputs(logits=torch.zeros(len(f), 2), features=f, labels=torch.zeros(len(f), dtype=torch.long))  # noqa: E731
    ours_score = POSTPROCESSORS.build({"name": "npos", "k": 50}).fit(outs(ftrain)).score(outs(ftest))
    same_order = bool((np.argsort(ours_score, kind="stable") == np.argsort(pub_score, kind="stable")).all())
    t.add("KNN score (K 50 of 200, normalised penultimate): ours -d_K, published -d_K^2",
          f"{maxdiff(-(torch.as_tensor(ours_score) ** 2), torch.as_tensor(pub_score)):.1e} after squaring; "
          f"same order: {same_order}", "equal (monotone transform: identical AUROC/FPR)" if same_order else "DIFFERS")

    # schedule: the published per-epoch cosine (warm-up off: it applies only to batches > 256)
    args = types.SimpleNamespace(learning_rate=0.5, cosine=True, lr_decay_rate=0.1, epochs=500, lr_decay_epochs=[150, 250, 600])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    pub_lr = []
    for e in range(500):
        util.adjust_learning_rate(args, opt, e)
        pub_lr.append(opt.param_groups[0]["lr"])
    cfg = load_config(["configs/experiments/npos/train_npos_cifar10.yml"]).trainer
    spec = check_schedule_spec(dict(cfg.scheduler), 500)
    ours_lr = [cfg.optimizer.lr * schedule_factor(spec, e, 500, 1) for e in range(500)]
    t.equal("lr per epoch, 500 epochs (adjust_learning_rate vs `cosine`, interval epoch, min ratio 1e-3)",
            maxdiff(ours_lr, pub_lr), 1e-12)
    golden["schedule_paper"] = torch.tensor(pub_lr, dtype=torch.float64)

    # recipe defaults: train_CIFAR10.py argparse defaults + train_npos_cifar10.sh
    d = {**argparse_defaults(src / "train_CIFAR10.py"), **shell_overrides(src / "train_npos_cifar10.sh")}
    pub_recipe = dict(lr=d["learning_rate"], momentum=d["momentum"], weight_decay=d["weight_decay"], epochs=d["epochs"],
                      batch=d["batch_size"], proto_m=d["proto_m"], temperature=d["temp"], w_disp=d["w_disp"],
                      w_comp=d["w_comp"], w_reg=d["loss_weight"], queue=d["sample_number"], K=d["K"],
                      select=d["select"], pick=d["pick_nums"], candidates=d["sample_from"], keep=d["ID_points_num"],
                      sigma=d["cov_mat"], start_epoch=d["start_epoch_KNN"], head_dim=d["feat_dim"],
                      warmup=d["batch_size"] > 256 or bool(d.get("warm", False)))
    o = cfg.outliers
    ours = dict(lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum, weight_decay=cfg.optimizer.weight_decay,
                epochs=cfg.epochs, batch=cfg.batch_size, proto_m=cfg.proto_m, temperature=cfg.temperature,
                w_disp=cfg.w_disp, w_comp=cfg.w_comp, w_reg=cfg.w_reg, queue=o.queue_size, K=o.K, select=o.select,
                pick=o.pick, candidates=o.candidates, keep=o.keep, sigma=o.sigma, start_epoch=o.start_epoch,
                head_dim=128, warmup=spec["warmup_epochs"] > 0)
    recipe_rows(t, pub_recipe, ours)
    paper_extra_rows(t, src, cfg)
    return t


def npos_view_transform_rows(t: Table, published_transform, config: list, label: str) -> None:
    """The training views: the published transform (TwoCropTransform of a torchvision Compose) against
    our trainer's ``train_transform`` on the config's preprocessor, the same seed before each side."""
    from PIL import Image

    from openood_ext.config import to_plain
    from openood_ext.trainers import TRAINERS

    cfg = to_plain(load_config(config))
    tr = {k: v for k, v in cfg["trainer"].items() if k in ("views", "crop_min")}
    ours = TRAINERS.build({"name": "npos", **tr}).train_transform(cfg["benchmark"]["preprocessor"])
    img = Image.fromarray(np.random.default_rng(9).integers(0, 256, (32, 32, 3)).astype(np.uint8))
    worst = 0.0
    for seed in range(20):
        torch.manual_seed(seed)
        a = torch.stack(published_transform(img))
        torch.manual_seed(seed)
        worst = max(worst, maxdiff(a, ours(img)))
    t.equal(f"{label}: training views (RandomResizedCrop 0.2, flip, jitter p 0.8, grey p 0.2, Normalize), "
            f"2 views x 20 fixed draws", worst, 1e-6)


def paper_extra_rows(t: Table, src: Path, cfg) -> None:
    """The paper recipe's loader, optimizer, network, normalisation, views and test-time K, each read from
    the checkout, against configs/experiments/npos/{train,test_ood}_npos_cifar10.yml (and cifar100)."""
    from openood_ext.config import to_plain

    text = (src / "train_CIFAR10.py").read_text()
    t.add(f"recipe `nesterov`: published {'nesterov=True' in text}, ours {cfg.optimizer.nesterov}",
          "0" if ("nesterov=True" in text) == bool(cfg.optimizer.nesterov) else "differs",
          "equal" if ("nesterov=True" in text) == bool(cfg.optimizer.nesterov) else "DIFFERS")
    pub_drop = bool(re.search(r"labeled_trainloader = .*?drop_last=True", text, re.S))
    t.add(f"recipe `drop_last` (training loader): published {pub_drop}, ours trainer.drop_last {cfg.drop_last}",
          "0" if pub_drop == bool(cfg.drop_last) else "differs", "equal" if pub_drop == bool(cfg.drop_last) else "DIFFERS")
    d = argparse_defaults(src / "train_CIFAR10.py")
    sh = shell_overrides(src / "train_npos_cifar10.sh")
    full = to_plain(load_config(["configs/experiments/npos/train_npos_cifar10.yml"]))
    model = sh.get("model", d["model"])
    same = (f"npos_{model}_32x32", d["feat_dim"], d["penultimate_dim"]) == (full["network"]["name"], 128, 512)
    t.add(f"recipe network: published {model} (SupCEHeadResNet, head {d['feat_dim']}, penultimate "
          f"{d['penultimate_dim']}), ours {full['network']['name']} (head 128, penultimate 512)",
          "0" if same else "differs", "equal" if same else "DIFFERS")
    cifar = load_file("npos_published_cifar", src / "cifar.py")
    pre = full["benchmark"]["preprocessor"]
    d_norm = maxdiff(torch.tensor([*cifar.cifar10_mean, *cifar.cifar10_std]), torch.tensor([*pre["mean"], *pre["std"]]))
    t.equal(f"recipe normalisation: published cifar10 mean/std {cifar.cifar10_mean}/{cifar.cifar10_std}, ours "
            f"{pre['mean']}/{pre['std']}", d_norm, 0)
    npos_view_transform_rows(t, cifar.get_transforms(cifar.cifar10_mean, cifar.cifar10_std),
                             ["configs/experiments/npos/train_npos_cifar10.yml"], "paper CIFAR-10")
    test_k = shell_overrides(src / "test_npos_cifar10.sh").get("K")
    ours_k = [p["k"] for p in to_plain(load_config(["configs/experiments/npos/test_ood_npos_cifar10.yml"]))["postprocessors"]
              if p["name"] == "npos"]
    t.add(f"recipe test-time K: published test_npos_cifar10.sh --K {test_k}, ours test_ood_npos_cifar10.yml {ours_k}",
          "0" if ours_k == [test_k] else "differs", "equal" if ours_k == [test_k] else "DIFFERS")
    uses_test = "DispLoss(args, model, val_loader" in text and "testloader" in text
    t.add("prototype initialisation: published DispLoss(..., val_loader) where val_loader is the CIFAR *test* "
          f"loader ({uses_test}); ours prototype_init {cfg.prototype_init}", "by construction",
          "documented published defect (test images shape training); equal with switch `prototype_init: test` "
          "(id_val + id_test = the whole CIFAR test split)")
    t.add(f"run seed: published torch/numpy seed fixed at 20 in the script; ours `seed` {full['seed']} "
          "(any seed; `scripts/cifar10_train_npos.sh SEED=...`)", "-", "documented: a run setting, not a recipe value")
    # CIFAR-100: train_CIFAR100.py + train_npos_cifar100.sh against configs/experiments/npos/train_npos_cifar100.yml
    d100 = {**argparse_defaults(src / "train_CIFAR100.py"), **shell_overrides(src / "train_npos_cifar100.sh")}
    c100 = to_plain(load_config(["configs/experiments/npos/train_npos_cifar100.yml"]))
    tr, o = c100["trainer"], c100["trainer"]["outliers"]
    pairs = {"network": (f"npos_{d100['model']}_32x32", c100["network"]["name"]), "proto_m": (d100["proto_m"], tr["proto_m"]),
             "lr": (d100["learning_rate"], tr["optimizer"]["lr"]), "epochs": (d100["epochs"], tr["epochs"]),
             "batch": (d100["batch_size"], tr["batch_size"]), "K": (d100["K"], o["K"]),
             "candidates": (d100["sample_from"], o["candidates"]), "keep": (d100["ID_points_num"], o["keep"]),
             "sigma": (d100["cov_mat"], o["sigma"]), "start_epoch": (d100["start_epoch_KNN"], o["start_epoch"]),
             "temperature": (d100["temp"], tr["temperature"]), "drop_last": (pub_drop, tr["drop_last"]),
             "mean/std": ((list(cifar.cifar100_mean), list(cifar.cifar100_std)),
                          (c100["benchmark"]["preprocessor"]["mean"], c100["benchmark"]["preprocessor"]["std"]))}
    bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
    t.add("recipe CIFAR-100 (train_CIFAR100.py + train_npos_cifar100.sh) -> train_npos_cifar100.yml: "
          + "; ".join(f"{k} {v[0]}" for k, v in pairs.items()), "0" if not bad else f"differs: {bad}",
          "equal" if not bad else "DIFFERS")
    covered = {"train_npos_cifar10.yml": "the paper's CIFAR-10 rows above (+ npos_openood_v15.yml: OpenOOD's, below)",
               "test_ood_npos_cifar10.yml": "test-time K row above (OpenOOD: its APS row below)",
               "train_npos_cifar100.yml": "the CIFAR-100 row above", "test_ood_npos_cifar100.yml": "the CIFAR-100 row "
               "above; test_npos_cifar100.sh --K 300"}
    cpu = {"train_npos_digits.yml": "CPU check on the embedded digits set", "test_ood_npos_digits.yml": "CPU check",
           "test_ood_npos_digits_base.yml": "its cross-entropy baseline"}
    for path in sorted(Path("configs/experiments/npos").glob("*.yml")):
        if path.name in covered:
            t.add(f"recipe configs/experiments/npos/{path.name}", "-", f"equal ({covered[path.name]})")
        else:
            t.add(f"recipe configs/experiments/npos/{path.name}", "-",
                  f"not a published recipe (documented): {cpu[path.name]}" if path.name in cpu else "DIFFERS (unmapped)")
    k100 = shell_overrides(src / "test_npos_cifar100.sh").get("K")
    ours100 = [p["k"] for p in to_plain(load_config(["configs/experiments/npos/test_ood_npos_cifar100.yml"]))["postprocessors"]]
    t.add(f"recipe test-time K CIFAR-100: published --K {k100}, ours {ours100}", "0" if ours100 == [k100] else "differs",
          "equal" if ours100 == [k100] else "DIFFERS")


def run_openood(root: Path, golden: dict) -> Table:
    t = Table(f"NPOS vs OpenOOD v1.5 npos_trainer.py @ 3c35632 ({root})")
    faiss_gpu_shim()
    comm = types.ModuleType("openood.utils.comm")
    comm.is_main_process, comm.gather = (lambda: True), (lambda x: [x])
    utils = types.ModuleType("openood.utils")
    utils.Config, utils.comm = dict, comm
    pkg = types.ModuleType("openood")
    pkg.utils = utils
    sys.modules.update({"openood": pkg, "openood.utils": utils, "openood.utils.comm": comm})
    tqdm = types.ModuleType("tqdm")
    tqdm.tqdm = lambda it, **k: it
    real_tqdm, sys.modules["tqdm"] = sys.modules.get("tqdm"), tqdm
    try:
        mod = load_file("openood_npos_trainer", root / "openood/trainers/npos_trainer.py")
    finally:
        if real_tqdm is not None:
            sys.modules["tqdm"] = real_tqdm
        else:
            del sys.modules["tqdm"]
    mod.torch = CpuTorch()

    E, steps, start = 3, 6, 2
    rec, cfg = openood_run(mod, E=E, steps=steps, start=start)
    # schedule: every step's lr against `supcon` with warmup_epoch_base 0 (published) and 1 (intended)
    lr = cfg.optimizer.lr
    for base, verdict in ((0, "`warmup_epoch_base: 0`"), (1, None)):
        spec = check_schedule_spec({"name": "supcon", "min_lr_ratio": 1e-3, "warmup_epochs": 10, "warmup_from_ratio":
                                    0.001 / lr, "warmup_epoch_base": base}, E)
        ours = [lr * schedule_factor(spec, i, E, steps) for i in range(E * steps)]
        if base == 0:
            t.equal(f"lr at each of {E} x {steps} steps (adjust_learning_rate + warmup_learning_rate, warm: True)",
                    maxdiff(ours, rec["lr"]), 1e-12, switch=verdict)
        else:
            t.add("lr, `warmup_epoch_base: 1` (default, SupCon's formula as intended)",
                  f"first step {ours[0]:.2e} vs published {rec['lr'][0]:.2e}",
                  "documented deviation (published first epoch runs at a negative lr)")
    spread = max(max(g) - min(g) for g in rec["group_lrs"])
    t.equal("mlp group lr (configured x0.1) after adjust/warm-up: max spread across groups", spread, 0.0)
    golden["schedule_openood"] = dict(lr=torch.tensor(rec["lr"], dtype=torch.float64), epochs=E, steps=steps)

    # synthesis start: OpenOOD's epoch_idx is 1-based; the first synthesising epoch, 0-based
    first_call_step = next(i for i, s in enumerate(rec["steps"]) if s["calls"] > 0)
    first_epoch0 = first_call_step // steps
    src = NPOSSynthesizer(queue_size=2, K=1, select=1, pick=1, candidates=1, keep=1, start_epoch=start - 1)
    src.update(torch.randn(4, 2), torch.tensor([0, 0, 0, 0]))
    src.num_classes = 1
    ours0 = min(e for e in range(E) if src.ready(e))
    t.add(f"first synthesising epoch (start_epoch_KNN {start}, 1-based) vs ours `start_epoch: {start - 1}`",
          f"published 0-based {first_epoch0}, ours {ours0}", "equal" if first_epoch0 == ours0 else "DIFFERS")
    v15 = load_config(["configs/experiments/npos/train_npos_cifar10.yml", "configs/trainers/npos_openood_v15.yml"])
    t.add("configs/trainers/npos_openood_v15.yml `start_epoch` (OpenOOD start_epoch_KNN 40)",
          f"{v15.trainer.outliers.start_epoch}", "equal" if v15.trainer.outliers.start_epoch == 39 else "DIFFERS")

    # one full step, loss and every gradient, in the first synthesising epoch after the fill
    calls_per_step = cfg.dataset.num_classes
    # (the queue is re-zeroed every epoch: the first steps of an epoch sample zero rows, see below)
    k = next(i for i, s in enumerate(rec["steps"]) if s["calls"] > 0 and
             all(bool((c["ID"].norm(dim=1) > 0).all()) for c in rec["calls"][s["calls"] - calls_per_step:s["calls"]]))
    before = rec["steps"][k]["calls"] - calls_per_step
    calls = rec["calls"][before:before + calls_per_step]
    step_in = dict(state=rec["steps"][k]["state"], proto_before=rec["steps"][k]["proto_before"],
                   batch=rec["batches"][k % steps], queues=torch.stack([c["ID"] for c in calls]), noise=calls[0]["G"],
                   picks=torch.stack([c["pick"] for c in calls]))
    terms, grads = ours_step(**step_in)
    pub_n = sum(len(c["out"]) for c in calls)
    t.add("outliers of that step", f"{pub_n} published rows, ours {int(terms['n_outliers'])}",
          "equal" if pub_n == int(terms["n_outliers"]) else "DIFFERS")
    pub_grads = rec["steps"][k]["grads"]
    names = [n for n in grads if pub_grads.get(n) is not None]
    worst = max(maxdiff(grads[n], pub_grads[n]) for n in names)
    t.equal(f"every gradient of one synthesising step ({len(names)} tensors: backbone, head, mlp; "
            "L_disp + L_comp + 0.1 R_open)", worst, 1e-5, switch="`ranking: published`")
    t.add("`fc` gradient", "OpenOOD: fc removed; ours: None", "equal (no loss on fc)")
    golden["step"] = dict(inputs=step_in, grads={n: pub_grads[n] for n in names})

    # the per-epoch queue reset (data_dict re-zeroed, its fill counter not): the next epoch samples zero rows
    nxt = [c for c in rec["calls"] if c["step"] // steps == first_epoch0][:calls_per_step]
    zero = sum(int((c["ID"].norm(dim=1) == 0).sum()) for c in nxt)
    total = sum(c["ID"].shape[0] for c in nxt)
    nan_out = sum(int(torch.isnan(c["out"]).any(dim=1).sum()) for c in nxt)
    t.add(f"queue at the first synthesis of epoch {first_epoch0 + 1} (OpenOOD re-zeroes it every epoch, not its counter)",
          f"{zero} of {total} queue rows zero (NaN once normalised); {nan_out} NaN outliers",
          "documented published defect, not reproduced (our queue persists)")
    # recipe defaults: configs/pipelines/train/train_npos.yml + scripts/ood/npos/cifar10_train_npos.sh
    import yaml
    y = yaml.safe_load((root / "configs/pipelines/train/train_npos.yml").read_text())
    sh = shell_overrides(root / "scripts/ood/npos/cifar10_train_npos.sh")
    ta, op = y["trainer"]["trainer_args"], y["optimizer"]
    get = lambda key, default: sh.get(key, default)  # noqa: E731
    pub = dict(lr=get("optimizer.lr", op["lr"]), momentum=op["momentum"], weight_decay=op["weight_decay"],
               epochs=get("optimizer.num_epochs", op["num_epochs"]), batch=get("dataset.train.batch_size", None),
               proto_m=ta["proto_m"], temperature=get("trainer.trainer_args.temp", ta["temp"]), w_disp=ta["w_disp"],
               w_comp=ta["w_comp"], w_reg=ta["loss_weight"], queue=ta["sample_number"],
               K=get("trainer.trainer_args.K", ta["K"]), select=ta["select"], pick=ta["pick_nums"],
               candidates=get("trainer.trainer_args.sample_from", ta["sample_from"]),
               keep=get("trainer.trainer_args.ID_points_num", ta["ID_points_num"]),
               sigma=get("trainer.trainer_args.cov_mat", ta["cov_mat"]),
               start_epoch_1based=get("trainer.trainer_args.start_epoch_KNN", ta["start_epoch_KNN"]),
               warmup_epochs=10 if op["warm"] else 0, min_lr_ratio=op["lr_decay_rate"] ** 3)
    c, o = v15.trainer, v15.trainer.outliers
    ours = dict(lr=c.optimizer.lr, momentum=c.optimizer.momentum, weight_decay=c.optimizer.weight_decay,
                epochs=c.epochs, batch=c.batch_size, proto_m=c.proto_m, temperature=c.temperature, w_disp=c.w_disp,
                w_comp=c.w_comp, w_reg=c.w_reg, queue=o.queue_size, K=o.K, select=o.select, pick=o.pick,
                candidates=o.candidates, keep=o.keep, sigma=o.sigma, start_epoch_1based=o.start_epoch + 1,
                warmup_epochs=c.scheduler.warmup_epochs, min_lr_ratio=c.scheduler.min_lr_ratio)
    recipe_rows(t, pub, ours)
    v15_config = ["configs/experiments/npos/train_npos_cifar10.yml", "configs/trainers/npos_openood_v15.yml"]
    trainer_src = (root / "openood/trainers/npos_trainer.py").read_text()
    nest = "nesterov=True" in trainer_src
    t.add(f"recipe `nesterov`: published {nest}, ours {c.optimizer.nesterov}", "0" if nest == bool(c.optimizer.nesterov)
          else "differs", "equal" if nest == bool(c.optimizer.nesterov) else "DIFFERS")
    utils_src = (root / "openood/datasets/utils.py").read_text()
    pub_drop = "drop_last=True" in utils_src
    t.add(f"recipe `drop_last` (training loader, openood/datasets/utils.py): published {pub_drop}, ours "
          f"{c.drop_last}", "0" if pub_drop == bool(c.drop_last) else "differs",
          "equal" if pub_drop == bool(c.drop_last) else "DIFFERS")
    norm = load_file("openood_transform_consts", root / "openood/preprocessors/transform.py").normalization_dict["cifar10"]
    pre = v15.benchmark.preprocessor
    t.equal(f"recipe normalisation (normalization_dict cifar10: mean {tuple(norm[0])}, std {tuple(norm[1])}) "
            f"vs ours {list(pre.mean)}/{list(pre.std)}",
            maxdiff(torch.tensor(norm[0] + norm[1]), torch.tensor(list(pre.mean) + list(pre.std))), 0)
    net_yml = yaml.safe_load((root / "configs/networks/npos_net.yml").read_text())["network"]
    backbone = sh.get("network.backbone.name", net_yml["backbone"]["name"])
    from openood_ext.config import to_plain
    v15_plain = to_plain(load_config(v15_config))
    same = (f"npos_{backbone}", net_yml["feat_dim"]) == (v15_plain["network"]["name"], 128)
    t.add(f"recipe network: published npos_net, backbone {backbone}, feat_dim {net_yml['feat_dim']}; ours "
          f"{v15_plain['network']['name']} (head 128)", "0" if same else "differs", "equal" if same else "DIFFERS")
    import torchvision.transforms as tvs

    class _Cfg(dict):
        __getattr__ = dict.__getitem__

    cider_cfg = _Cfg(dataset=_Cfg(pre_size=32, image_size=32, interpolation="bilinear", normalization_type="cifar10",
                                  name="cifar10"))
    stub_modules("openood.utils.config")
    sys.modules["openood.utils.config"].Config = dict
    transform_mod = sys.modules["openood_transform_consts"]
    pkg = types.ModuleType("openood.preprocessors")
    pkg.__path__ = []
    sys.modules.setdefault("openood.preprocessors", pkg)
    sys.modules["openood.preprocessors.transform"] = transform_mod
    cider = load_file("openood.preprocessors.cider_preprocessor", root / "openood/preprocessors/cider_preprocessor.py")
    views = cider.CiderPreprocessor(cider_cfg).transform
    assert isinstance(views.transform, tvs.Compose)
    npos_view_transform_rows(t, views, v15_config, "OpenOOD cider preprocessor")
    aps_yml = yaml.safe_load((root / "configs/postprocessors/npos.yml").read_text())["postprocessor"]
    ours_grid = yaml.safe_load(Path("configs/postprocessors/npos.yml").read_text())["aps_grid"]["k"]
    test_cfg = to_plain(load_config(["configs/experiments/npos/test_ood_npos_cifar10.yml", v15_config[1]]))
    same = aps_yml["APS_mode"] == bool(test_cfg.get("aps")) and aps_yml["postprocessor_sweep"]["K_list"] == ours_grid
    t.add(f"recipe test-time K: published APS_mode {aps_yml['APS_mode']} over K {aps_yml['postprocessor_sweep']['K_list']}; "
          f"ours test_ood_npos_cifar10.yml + npos_openood_v15.yml aps {test_cfg.get('aps')} over {ours_grid}",
          "0" if same else "differs", "equal" if same else "DIFFERS")
    return t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--published", type=Path, help="deeplearning-wisc/npos checkout")
    p.add_argument("--openood", type=Path, help="Jingkang50/OpenOOD checkout")
    p.add_argument("--golden", type=Path, help="write the published outputs for the tests here (.pt)")
    a = p.parse_args(argv)
    if not a.published and not a.openood:
        p.error("give --published and/or --openood")
    cpu_cuda()
    torch.set_num_threads(1)
    golden: dict = {}
    tables = []
    if a.published:
        tables.append(run_published(a.published, golden))
    if a.openood:
        tables.append(run_openood(a.openood, golden))
    print("\n\n".join(t.markdown() for t in tables))
    if a.golden:
        a.golden.parent.mkdir(parents=True, exist_ok=True)
        torch.save(golden, a.golden)
        print(f"\ngolden values -> {a.golden}")
    bad = [r for t in tables for r in t.rows if r[2].startswith("DIFFERS")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
