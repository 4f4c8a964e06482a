"""Side-by-side check of openood_ext's VMDLS against the published code (Dinari & Freifeld, UAI 2022).

    python scripts/parity/vmdls.py --published /path/to/vmdls [--bolts /path/to/lightning_bolts] [--out FILE.md]
        [--golden tests/trainers/golden/vmdls_published.pt]

Checked against ``BGU-CS-VIL/vmdls`` at commit 5add9e29dc202903f49b31c9435a22faa164855a. The published
modules are imported from the checkout (nothing of it is copied here). Its Lightning-era imports are
shimmed in this script: ``pytorch_lightning`` (LightningModule = nn.Module), ``pl_bolts`` (its autoencoder
components are read from ``--bolts``, an unpacked ``lightning-bolts`` 0.7.0 wheel or checkout, when given;
the bolts items are skipped otherwise). The training-loss item needs ``pytorch-metric-learning`` (the
published triplet loss subclasses it). Every item builds both sides with the same weights (copied module
by module, in forward order per module type, shapes checked) and the same inputs and random draws, and
prints the largest absolute difference with a verdict.

``--golden PATH`` also writes the published side's outputs for fixed seeds into PATH, the values
``tests/trainers/test_vmdls_golden.py`` checks in CI without the checkout.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import tempfile
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from openood_ext.networks import NETWORKS  # noqa: E402
from openood_ext.networks.vmdls_ae import published_mnist_ae_state_dict  # noqa: E402
from openood_ext.datasets.transforms import build_transform  # noqa: E402
from openood_ext.postprocessors.vmdls import vmdls_scores  # noqa: E402
from openood_ext.trainers import TRAINERS, Batch, TrainContext  # noqa: E402
from openood_ext.trainers.vmdls_sampler import ClassBalancedBatchSampler  # noqa: E402

TOL = 1e-5


# ------------------------------------------------------------------------------------------------ shims
STUBBED = ("pytorch_lightning", "pl_bolts", "neptunecontrib", "neptune", "kornia", "tsnecuda")


class _Stub(types.ModuleType):
    """A stand-in module: any attribute is a placeholder class (the published code only names them)."""

    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (object,), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in STUBBED and fullname not in sys.modules:
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


def install_shims(published: Path, bolts: Path | None) -> bool:
    """Stub the published code's Lightning-era dependencies; True when bolts' AE components are available."""
    sys.path.insert(0, str(published))         # its ``models``, ``losses`` and ``data`` folders
    sys.meta_path.insert(0, _StubFinder())
    import pytorch_lightning as pl

    class LightningModule(nn.Module):
        def save_hyperparameters(self, *a, **k):
            pass

        def log_dict(self, *a, **k):
            pass

        def log(self, *a, **k):
            pass

    pl.LightningModule = LightningModule
    from torchvision import transforms as T
    import pl_bolts.transforms.dataset_normalizations as norm
    norm.cifar10_normalization = lambda: T.Normalize([x / 255 for x in (125.3, 123.0, 113.9)],
                                                     [x / 255 for x in (63.0, 62.1, 66.7)])
    import pl_bolts.utils.stability as stability
    stability.under_review = lambda: (lambda obj: obj)
    found = sorted(Path(bolts).rglob("pl_bolts/models/autoencoders/components.py")) if bolts else []
    if found:
        spec = importlib.util.spec_from_file_location("pl_bolts.models.autoencoders.components", found[0])
        comp = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = comp
        spec.loader.exec_module(comp)
    return bool(found)


def load(name: str):
    return importlib.import_module(name)


# ------------------------------------------------------------------------------------------------ helpers
KINDS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.Linear)


def copy_weights(src: nn.Module, dst: nn.Module) -> str:
    """Copy parameters and buffers module by module, per module type in registration (forward) order."""
    extra = []
    for kind in KINDS:
        a = [m for m in src.modules() if type(m) is kind]
        b = [m for m in dst.modules() if type(m) is kind]
        for ma, mb in zip(a, b):
            sa, sb = ma.state_dict(), mb.state_dict()
            if {k: v.shape for k, v in sa.items()} != {k: v.shape for k, v in sb.items()}:
                raise RuntimeError(f"{kind.__name__} shapes differ: {[v.shape for v in sa.values()]} vs "
                                   f"{[v.shape for v in sb.values()]}")
            mb.load_state_dict(sa)
        if len(a) != len(b):
            extra.append(f"{kind.__name__} {len(a)} vs {len(b)}")
    return "; ".join(extra)


def fill_deterministic(net: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and buffer, module by module per type in forward order (as copy_weights),
    with values drawn from ``seed``: a weight setting both sides (and the CI golden test) can rebuild."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kind in KINDS:
            for m in (m for m in net.modules() if type(m) is kind):
                for name, t in m.state_dict(keep_vars=True).items():
                    if not t.is_floating_point():
                        continue
                    noise = torch.randn(t.shape, generator=g)
                    if kind is nn.BatchNorm2d and name in ("weight", "running_var"):
                        t.copy_(1.0 + 0.1 * noise.abs())
                    else:
                        fan_in = t[0].numel() if t.dim() > 1 else 1
                        t.copy_(noise * (0.1 if t.dim() == 1 else (2.0 / fan_in) ** 0.5))
    return net


def randomize_bn(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def diff(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


class Table:
    def __init__(self):
        self.rows = []

    def add(self, item: str, difference: float | None, verdict: str, note: str = ""):
        d = "-" if difference is None else f"{difference:.2e}"
        self.rows.append((item, d, verdict, note))
        print(f"{item:58s} {d:>9s}  {verdict}  {note}", flush=True)

    def equal(self, item: str, difference: float, note: str = "", tol: float = TOL, switch: str = ""):
        ok = difference <= tol
        self.add(item, difference, ("equal" + (f" with {switch}" if switch else "")) if ok else "DIFFERS", note)

    def markdown(self) -> str:
        lines = ["| item | max abs difference | verdict | note |", "|---|---|---|---|"]
        lines += [f"| {i} | {d} | {v} | {n} |" for i, d, v, n in self.rows]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ items
def encoders(pub: Path, table: Table, golden: dict) -> None:
    dec = load("models.decoders_encoders")
    torch.manual_seed(0)
    theirs = fill_deterministic(dec.MnistConvEncoder().eval(), 100)
    ours = NETWORKS.build({"name": "vmdls", "encoder": "mnist_conv", "num_classes": 10, "latent_dim": 32}).eval()
    copy_weights(theirs, ours.encoder)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pooled, out = ours.encoder(x)
        d = max(diff(pooled[i], theirs.get_layer_output(x, i + 1)) for i in range(3))
        table.equal("mnist_conv encoder: l1, l2, l3 (get_layer_output 1-3)", d)
        table.equal("mnist_conv encoder: output (500-d)", diff(out, theirs(x)))
        golden["mnist_conv"] = {"weights_seed": 100, "x": x, "out": theirs(x),
                                "pooled": [theirs.get_layer_output(x, i) for i in (1, 2, 3)]}

    specs = [("vgg", "models.vgg", "VGGM", {}, {}),
             ("densenet", "models.densenet", "DenseNet3", {"depth": 100, "num_classes": 10}, {}),
             ("wide_resnet", "models.wide_resnet", "WideResNet", {"depth": 28, "num_classes": 10,
                                                                      "widen_factor": 10, "dropRate": 0.0},
              {"dropout": 0.0})]
    for name, rel, cls, kwargs, enc_args in specs:
        mod = load(rel)
        torch.manual_seed(0)
        theirs = getattr(mod, cls)(**kwargs).eval()
        randomize_bn(theirs, 3)
        ours = NETWORKS.build({"name": "vmdls", "encoder": name, "in_channels": 3, "num_classes": 10,
                               "image_size": 32, "latent_dim": 32, "encoder_args": enc_args}).eval()
        extra = copy_weights(theirs, ours.encoder)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            pooled, out = ours.encoder(x)
            d_layers = max(diff(pooled[i], theirs.get_layer_output(x, i + 1).flatten(1)) for i in range(3))
            d_out = diff(out, theirs.get_layer_output(x, 4).flatten(1))
        scale = float(out.abs().max())
        table.equal(f"{name} encoder: l1-l3 and output (relative to max abs(out) {scale:.2g})",
                    max(d_layers, d_out) / max(scale, 1e-12), note=f"unmatched modules: {extra}" if extra else "",
                    tol=1e-6)


def wrn_ensemble_draws(pub: Path, table: Table, golden: dict) -> None:
    mod = load("models.wide_resnet")
    torch.manual_seed(0)
    theirs = fill_deterministic(mod.WideResNet(10, 3, 1, 0.3).eval(), 103)   # depth 10, widen 1: test size
    ours = NETWORKS.build({"name": "vmdls", "encoder": "wide_resnet", "in_channels": 3, "num_classes": 3,
                           "latent_dim": 4, "encoder_args": {"depth": 10, "widen": 1, "dropout": 0.3,
                                                             "mc_dropout": True}}).eval()
    copy_weights(theirs, ours.encoder)
    fill_deterministic(ours.fc_mu, 104)
    fc_mu = ours.fc_mu
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.manual_seed(9)    # the published test_step: mu first, then get_layer_output(x, 1..4)
        mu = fc_mu(theirs(x))
        published = torch.cat([theirs.get_layer_output(x, i).flatten(1) for i in range(1, 5)] + [mu], 1)
        torch.manual_seed(9)
        d = diff(ours.ensemble(x), published)
    golden["wrn_draws"] = {"weights_seed": 103, "head_seed": 104, "x": x, "draw_seed": 9, "ensemble": published}
    table.equal("WRN ensemble under always-on dropout: five draws, published order", d,
                switch="encoder_args.mc_dropout: true", tol=1e-6)


def autoencoders(pub: Path, table: Table, have_bolts: bool, golden: dict) -> None:
    ae_mod = load("models.mnist_ae")
    torch.manual_seed(0)
    theirs = fill_deterministic(ae_mod.MNIST_AE(input_height=28, enc_type="mnist").eval(), 101)
    ours = NETWORKS.build({"name": "ae_mnist_conv"}).eval()
    n_t, n_o = sum(p.numel() for p in theirs.parameters()), sum(p.numel() for p in ours.parameters())
    ours.load_state_dict(published_mnist_ae_state_dict(theirs.state_dict()))     # strict: every key fits
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        table.equal("MNIST_AE: state dict loads; reconstruction", diff(ours.reconstruct(x), theirs(x)),
                    note=f"parameters {n_t:,} / {n_o:,}")
        golden["mnist_ae"] = {"weights_seed": 101, "x": x, "out": theirs(x)}
    if not have_bolts:
        table.add("bolts AE resnet18 / resnet50", None, "not run", "pass --bolts (lightning-bolts 0.7.0)")
        return
    comp = sys.modules["pl_bolts.models.autoencoders.components"]
    for arch, enc_dim, ours_name in (("resnet18", 512, "ae_resnet18_32x32"), ("resnet50", 2048, "ae_resnet50_32x32")):
        torch.manual_seed(0)
        theirs = nn.Module()     # bolts' AE: encoder, fc (enc_out_dim -> latent 256), decoder
        theirs.encoder = getattr(comp, f"{arch}_encoder")(False, False)
        theirs.fc = nn.Linear(enc_dim, 256)
        theirs.decoder = getattr(comp, f"{arch}_decoder")(256, 32, False, False)
        theirs.eval()
        randomize_bn(theirs, 6)
        ours = NETWORKS.build({"name": ours_name}).eval()
        ours.load_state_dict(theirs.state_dict())                                # strict: same names
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            want = theirs.decoder(theirs.fc(theirs.encoder(x)))
            n = sum(p.numel() for p in theirs.parameters())
            table.equal(f"bolts AE {arch} (latent 256): state dict loads; reconstruction", diff(ours.reconstruct(x), want),
                        note=f"{n:,} parameters")


def training_loss(pub: Path, table: Table, golden: dict) -> None:
    try:
        triplets = load("losses.modded_triplets")
        vae = load("models.vae")
    except ImportError as exc:
        table.add("training loss (triplet + distancing + KL)", None, "not run", f"{exc}")
        return
    enc = load("models.decoders_encoders").MnistConvEncoder
    torch.manual_seed(0)
    model = vae.GMM_VAE_Contrastive.__new__(vae.GMM_VAE_Contrastive)
    nn.Module.__init__(model)
    model.encoder, model.fc_mu, model.fc_var = enc(), nn.Linear(500, 32), nn.Linear(500, 32)
    fill_deterministic(model, 102)
    class Triplets(triplets.TripletMarginLossModded):
        """pytorch-metric-learning 2.x passes two more arguments; the published loss adds in place to a ReLU
        output, which current autograd rejects, so ReLU returns a copy here (same values)."""

        def compute_loss(self, embeddings, labels, indices_tuple, ref_emb=None, ref_labels=None):
            relu = torch.nn.functional.relu
            torch.nn.functional.relu = lambda x, *a, **k: relu(x, *a, **k).clone()
            try:
                return super().compute_loss(embeddings, labels, indices_tuple)
            finally:
                torch.nn.functional.relu = relu

    model.metric_loss = Triplets(margin=0.1, neg_margin=0.15)
    model.kl_coeff, model.class_num, model.generation_epoch = 0.1, 10, 0
    g = torch.Generator().manual_seed(11)
    model.class_means = torch.randn(10, 32, generator=g) * 0.3          # a previous epoch's class means
    model.class_temp_means, model.class_temp_cov = torch.zeros(10, 32), torch.zeros(10, 32, 32)
    model.class_counts = torch.zeros(10)
    model.trainer = SimpleNamespace(current_epoch=0)
    # monitoring only (log-likelihood quantiles of the sampled z from epoch 1 on), not in the loss
    model.class_gaussian = [torch.distributions.MultivariateNormal(m, torch.eye(32)) for m in model.class_means]
    model.precentiles = [[] for _ in range(10)]
    ours = NETWORKS.build({"name": "vmdls", "encoder": "mnist_conv", "num_classes": 10, "latent_dim": 32})
    copy_weights(model, ours)
    trainer = TRAINERS.get("vmdls")(batch_classes=4, sample_count=3, margins_epoch=1)   # the MNIST recipe
    trainer.setup(ours, TrainContext(device=torch.device("cpu"), num_classes=10, epochs=1, steps_per_epoch=1))
    trainer.stats.means.copy_(model.class_means)
    update_margin = vae.UpdateMargin(32, 1.0, 1)      # the published callback, margins_epoch 1
    x = torch.randn(12, 1, 28, 28, generator=g)
    y = torch.tensor([0, 0, 0, 3, 3, 3, 5, 5, 5, 8, 8, 8])
    margins = []
    for epoch in range(36):
        model.trainer.current_epoch = epoch
        update_margin.on_train_epoch_start(model.trainer, model)
        trainer.on_epoch_start(epoch)
        margins.append((model.metric_loss.neg_margin, trainer.neg_margin))
        if epoch not in (0, 3):
            continue
        torch.manual_seed(21)
        loss_pub, _ = model.step((x, y), 0)
        torch.manual_seed(21)
        out = trainer.training_step(Batch(x, y, None, epoch, 0, 0))
        loss_pub.backward()
        out["loss"].backward()
        grad = max(diff(p.grad, q.grad) / max(float(p.grad.abs().max()), 1e-12)
                   for p, q in zip(model.parameters(), ours.parameters()))
        scale = max(abs(float(loss_pub)), 1.0)
        table.equal(f"training loss (triplet + distancing + KL), epoch {epoch}, margin {trainer.neg_margin:.2f}: "
                    f"relative to the loss {float(loss_pub):.4g}", diff(out["loss"].detach(), loss_pub.detach()) / scale,
                    note=f"every gradient: max difference relative to its largest entry {grad:.1e}", tol=1e-6)
        golden.setdefault("loss", {})[epoch] = float(loss_pub.detach())
        model.zero_grad()
        ours.zero_grad()
    table.equal("distancing margin schedule, epochs 0-35 (M_d 32)", max(abs(a - b) for a, b in margins), tol=1e-9,
                note=f"last {margins[-1][0]:.2f}")
    golden["loss"].update({"weights_seed": 102, "x": x, "y": y, "class_means": model.class_means.clone(),
                           "draw_seed": 21, "margins": [a for a, _ in margins]})


def sampler(pub: Path, table: Table) -> None:
    dt = load("data.data_transforms")
    loader_mod = load("data.open_set_data_loader")
    worst = 0
    for n, bc, bs in ((1000, 10, 10), (1000, 10, 16), (60000, 10, 16), (650, 6, 16), (200, 4, 5)):
        labels = torch.arange(n) % bc
        np.random.seed(0)
        published = len(list(loader_mod.BalancedBatchSampler(labels, bc, bs)))
        worst = max(worst, abs(published - len(ClassBalancedBatchSampler(labels.numpy(), bc, bs))))
    table.equal("class-balanced sampler: batches per epoch (5 sizes, 2 divisible)", float(worst), tol=0)

    img = torch.zeros(28, 28, dtype=torch.uint8)
    img[6:22, 12:16] = 255
    from PIL import Image
    pil = Image.fromarray(img.numpy(), "L")
    from openood_ext.config import load_config, to_plain
    # the preprocessor users run: the benchmark the MNIST-recipe configs (F-MNIST) are built on
    pre = to_plain(load_config([REPO / "configs" / "benchmarks" / "vmdls_fmnist.yml"]).benchmark.preprocessor)
    ours, theirs, worst = build_transform(pre, train=True), dt.data_transforms["mnist"]["train"], 0.0
    for seed in range(20):
        torch.manual_seed(seed)
        a = theirs(pil)
        torch.manual_seed(seed)
        worst = max(worst, diff(ours(pil), a))
    table.equal("MNIST training transform (configs/benchmarks/vmdls_fmnist.yml: rotation + resized crop), 20 fixed draws", worst)
    worst = max(diff(build_transform(pre, train=False)(pil), dt.data_transforms["mnist"][split](pil))
                for split in ("val", "test"))
    table.equal("MNIST test transform", worst)


def score(pub: Path, table: Table) -> None:
    try:
        vae = load("models.vae")
    except ImportError as exc:
        table.add("score max_c (lp_c - M) * d", None, "not run", f"{exc}")
        return
    g = torch.Generator().manual_seed(13)
    k, dim, n = 3, 5, 40
    means = torch.randn(k, dim, generator=g, dtype=torch.float64)
    a = torch.randn(k, dim, dim, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + torch.eye(dim, dtype=torch.float64)
    data = torch.randn(n, dim, generator=g, dtype=torch.float64) * 2
    d = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    d = d / d.max()
    model = vae.GMM_VAE_Contrastive.__new__(vae.GMM_VAE_Contrastive)
    model.class_num = k
    model.class_gaussian = [torch.distributions.MultivariateNormal(means[i], covs[i]) for i in range(k)]
    values, labels = model.get_data_top_val(data, d)
    lp = torch.stack([model.class_gaussian[i].log_prob(data) for i in range(k)], 1)
    ours = vmdls_scores(lp.max(1).values.numpy(), d.numpy(), recon_max=1.0)
    table.equal("score max_c (lp_c - M) * d over one evaluated set (shift: scored)", diff(ours, values.double()),
                note="published: float32, here float64", tol=1e-5)
    table.equal("predicted class = argmax_c lp_c", float((lp.argmax(1) != labels).sum()), tol=0)


# ------------------------------------------------------------------------------------------------ recipes
def readme_commands(pub: Path) -> list[dict]:
    """The README's ``python main.py ...`` training commands, each as ``{option: value}`` (flags: True)."""
    import shlex

    text = (pub / "README.md").read_text()
    out = []
    for block in text.split("```")[1::2]:
        joined = " ".join(block.split("\n"))
        for cmd in joined.split("python main.py")[1:]:
            tokens, args, i = shlex.split(cmd), {}, 0
            while i < len(tokens):
                key = tokens[i].lstrip("-")
                if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                    args[key], i = tokens[i + 1], i + 2
                else:
                    args[key], i = True, i + 1
            out.append(args)
    return out


def code_constants(pub: Path) -> dict:
    """What models/vae.py fixes for every command: SGD's keywords, Adam's, the argparse defaults the commands
    leave out (kl_coeff, step_gamma), and the epoch at whose end fine-tuning unfreezes the encoder."""
    import ast
    import re

    src = (pub / "models" / "vae.py").read_text()
    out = {"defaults": {}}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("SGD", "Adam") and getattr(node.func.value, "attr", "") == "optim":
                out[node.func.attr.lower()] = {k.arg: ast.literal_eval(k.value) for k in node.keywords
                                               if isinstance(k.value, ast.Constant)}
            elif node.func.attr == "add_argument" and node.args:
                name = node.args[0].value.lstrip("-")
                for k in node.keywords:
                    if k.arg == "default":
                        out["defaults"][name] = ast.literal_eval(k.value)
    out["unfreeze_after_epoch"] = int(re.search(r"current_epoch == (\d+) and self\.finetune", src).group(1))
    return out


#: README command (encoder, known set, fine-tuning) -> our (trainer, network, benchmark) configs
RECIPE_CONFIGS = {
    ("vgg", "cifar_known", False): ("vmdls_cifar10_vgg", "vmdls_vgg", "vmdls_cifar10"),
    ("resnet18", "cifar_known", False): ("vmdls_cifar10", "vmdls_resnet18_32x32", "vmdls_cifar10"),
    ("densenet", "cifar_known", False): ("vmdls_cifar10_densenet", "vmdls_densenet", "vmdls_cifar10"),
    ("mnist-conv", "mnist", False): ("vmdls_mnist", "vmdls_mnist_conv", "vmdls_mnist"),
    ("densenet", "cifar100_known", True): ("vmdls_cifar100_densenet_finetune", "vmdls_densenet",
                                           "vmdls_cifar100"),
    ("wresnet", "cifar_known", True): ("vmdls_cifar10_wrn_finetune", "vmdls_wide_resnet", "vmdls_cifar10"),
}
#: README recipes whose experiment config sets what the shared network config does not (latent 64)
RECIPE_EXPERIMENTS = {
    ("densenet", "cifar100_known", True): "test_ood_vmdls_cifar100_densenet_finetune.yml",
}
ENCODERS = {"vgg": "vgg", "resnet18": "resnet18_32x32", "densenet": "densenet", "mnist-conv": "mnist_conv",
            "wresnet": "wide_resnet"}
#: the published data_transforms' training operations and Normalize constants, in our preprocessor's terms
TRANSFORMS = {"cifar": (["hflip", "random_crop"], [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]),
              "mnist": (["random_rotation", "random_resized_crop"], [0.5], [0.5])}
#: experiment configs that are not a README recipe (documented in docs/methods/vmdls.md)
NOT_RECIPES = {
    "test_ood_mnist_conv_digits.yml": "cross-entropy baseline on the embedded digits set (CPU)",
    "test_ood_mnist_conv_fmnist_small.yml": "cross-entropy baseline beside the reduced F-MNIST check",
    "test_ood_vmdls_ae_digits.yml": "digits CPU check (AE weight d, shift: fit labelled)",
    "test_ood_vmdls_digits.yml": "digits CPU check (6 classes, Adam 1e-3)",
    "train_ae_digits.yml": "the digits autoencoder for the check above",
}


def recipes(pub: Path, table: Table) -> None:
    from openood_ext.config import load_config, to_plain
    from openood_ext.trainers.optim import check_optimizer_spec, check_schedule_spec

    const = code_constants(pub)
    table.add(f"recipe constants (models/vae.py): SGD {const['sgd']}, Adam {const['adam'] or '{}'}, "
              f"unfreeze after epoch {const['unfreeze_after_epoch']}", None, "read from the checkout")
    cfgdir = REPO / "configs"
    commands = readme_commands(pub)
    for args in commands:
        key = (args["enc_type"], args["known_dataset"], bool(args.get("finetune")))
        if key not in RECIPE_CONFIGS:
            table.add(f"recipe README command {key}", None, "DIFFERS", "no config of ours named for it")
            continue
        trainer, network, bench = RECIPE_CONFIGS[key]
        files = [cfgdir / "benchmarks" / f"{bench}.yml", cfgdir / "networks" / f"{network}.yml",
                 cfgdir / "trainers" / f"{trainer}.yml"]
        has_bench = files[0].is_file()
        stub = Path(tempfile.mkdtemp()) / "stub.yml"  # what the network config interpolates, without a benchmark
        stub.write_text("seed: 0\n" + ("" if has_bench else
                        "benchmark: {name: x, num_classes: 100, preprocessor: {channels: 3, image_size: 32}}\n"))
        cfg = to_plain(load_config([stub] + (files if has_bench else files[1:])))
        if key in RECIPE_EXPERIMENTS:  # the experiment config's own settings on top
            exp = to_plain(load_config([cfgdir / "experiments" / "vmdls" / RECIPE_EXPERIMENTS[key]]))
            cfg.update({k: exp[k] for k in ("trainer", "network", "benchmark")})
        tr, net = cfg["trainer"], cfg["network"]
        epochs, step = int(args["max_epochs"]), int(args.get("step_size", const["defaults"]["step_size"]))
        opt = check_optimizer_spec(tr["optimizer"])
        sched = check_schedule_spec(tr["scheduler"], int(tr["epochs"]))
        sgd = args.get("opt", const["defaults"]["opt"]) == "sgd"
        want_opt = ({"name": "sgd", "lr": float(args["lr"]), "momentum": const["sgd"]["momentum"],
                     "nesterov": const["sgd"]["nesterov"], "weight_decay": const["sgd"]["weight_decay"]} if sgd
                    else {"name": "adam", "lr": float(args["lr"]), "weight_decay": 0})
        pairs = {
            "optimizer": (want_opt, {k: opt.get(k) for k in want_opt}),
            "StepLR": ((list(range(step, epochs, step)), float(args.get("step_gamma", const["defaults"]["step_gamma"])),
                        "epoch"), (sched["milestones"], sched["gamma"], sched["interval"])),
            "epochs": (epochs, tr["epochs"]),
            "batch_classes x sample_count": ((int(args["batch_classes"]), int(args["sample_count"])),
                                             (tr["batch_classes"], tr["sample_count"])),
            "M_d, jump, margins_epoch": ((float(args["margin_max_distance"]), float(args["margin_jump"]),
                                          int(args["margins_epoch"])),
                                         (float(tr["margin_max_distance"]), float(tr.get("margin_jump", 1.0)),
                                          int(tr["margins_epoch"]))),
            "kl_coeff, generation_epoch": ((float(args.get("kl_coeff", const["defaults"]["kl_coeff"])),
                                            int(args["generation_epoch"])),
                                           (float(tr["kl_coeff"]), int(tr["generation_epoch"]))),
            "encoder, latent_dim": ((ENCODERS[args["enc_type"]], int(args["latent_dim"])),
                                    (net["encoder"], int(net["latent_dim"]))),
        }
        if args.get("finetune"):
            pairs["fine-tuning: head lr, frozen epochs"] = (
                (float(args["finetune_lr"]), const["unfreeze_after_epoch"] + 1),
                (float(tr["head_lr"]), int(tr["freeze_encoder_epochs"])))
        if has_bench:
            pre = cfg["benchmark"]["preprocessor"]
            ops, mean, std = TRANSFORMS[args["data_transforms"]]
            pairs["training augmentation, Normalize"] = ((sorted(ops), mean, std),
                                                          (sorted(pre["train_augment"]), pre["mean"], pre["std"]))
        differs = {k: v for k, v in pairs.items() if v[0] != v[1]}
        note = "; ".join(f"{k} {v[0]}" for k, v in pairs.items())
        if differs:
            table.add(f"recipe README `{args['enc_type']}` on {args['known_dataset']} -> configs/trainers/{trainer}.yml "
                      f"+ networks/{network}.yml", None, "DIFFERS",
                      "; ".join(f"{k}: published {v[0]}, ours {v[1]}" for k, v in differs.items()))
        else:
            table.add(f"recipe README `{args['enc_type']}` on {args['known_dataset']} -> configs/trainers/{trainer}.yml "
                      f"+ networks/{network}.yml", 0.0, "equal", note)
    test_commands(pub, table)
    experiments = sorted((cfgdir / "experiments" / "vmdls").glob("*.yml"))
    used = {f"{t}.yml" for t, _, _ in RECIPE_CONFIGS.values()}
    for path in experiments:
        if path.name in NOT_RECIPES:
            table.add(f"recipe configs/experiments/vmdls/{path.name}", None, "not a published recipe",
                      NOT_RECIPES[path.name])
            continue
        base = [ln.strip(" -\n") for ln in path.read_text().splitlines() if "../../trainers/" in ln]
        trainer = Path(base[0]).name if base else "?"
        table.add(f"recipe configs/experiments/vmdls/{path.name}", None,
                  "equal (its trainer is a README recipe above)" if trainer in used else "DIFFERS",
                  f"trainer {trainer}" + (f"; reduced scale, documented: {REDUCED[path.name]}" if path.name in REDUCED
                                          else ""))


#: README test command (encoder, known set) -> our test config
TEST_CONFIGS = {("vgg", "cifar_known"): "test_ood_vmdls_cifar10_vgg.yml",
                ("resnet18", "cifar_known"): "test_ood_vmdls_cifar10_resnet18.yml",
                ("wresnet", "cifar_known"): "test_ood_vmdls_cifar10_wrn_finetune.yml",
                ("mnist-conv", "mnist"): "test_ood_vmdls_mnist.yml",
                ("densenet", "cifar_known"): "test_ood_vmdls_cifar10_densenet.yml",
                ("densenet", "cifar100_known"): "test_ood_vmdls_cifar100_densenet_finetune.yml"}


def test_commands(pub: Path, table: Table) -> None:
    """The README's ``python test.py`` commands: the reconstruction weight (``--ae_features``) against our
    test configs, and the images per class the published test-time Gaussian fit sees (its
    ``TestingBalancedBatchSampler`` over the training set with the command's batch_classes x sample_count)."""
    import shlex

    from openood_ext.config import load_config, to_plain

    loader_mod = load("data.open_set_data_loader")
    text = (pub / "README.md").read_text()
    for line in text.splitlines():
        if "python test.py" not in line:
            continue
        tokens, args = shlex.split(line.strip("` ").split("python test.py", 1)[1]), {}
        for i, tok in enumerate(tokens):
            if tok.startswith("--"):
                nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
                args[tok[2:]] = True if not nxt or nxt.startswith("--") else nxt
        key = (args["enc_type"], args["known_dataset"])
        label = f"README test `{args['enc_type']}` on {args['known_dataset']}"
        # the test-time fit: images per class the published sampler yields (CIFAR: 5,000 per class)
        n_cls = int(args["class_num"])
        per = 50_000 // n_cls if "cifar" in args["known_dataset"] else None
        if per:
            labels = torch.arange(n_cls).repeat_interleave(per)
            np.random.seed(0)
            seen = np.bincount(np.concatenate([np.asarray(b) for b in loader_mod.TestingBalancedBatchSampler(
                labels, int(args["batch_classes"]), int(args["sample_count"]))]) // per, minlength=n_cls)
            unique = np.unique(np.concatenate([np.asarray(b) for b in loader_mod.TestingBalancedBatchSampler(
                labels, int(args["batch_classes"]), int(args["sample_count"]))]))
            distinct = np.bincount(unique // per, minlength=n_cls)
            table.add(f"{label}: test-time Gaussian fit, training images per class (published "
                      f"TestingBalancedBatchSampler, {args['batch_classes']} x {args['sample_count']})", None,
                      "documented published defect" if distinct.min() < per else "equal",
                      f"published: {distinct.min()}..{distinct.max()} distinct images per class "
                      f"({seen.min()}..{seen.max()} drawn); ours: every training image ({per} per class)")
        cfg_name = TEST_CONFIGS.get(key)
        if cfg_name is None:
            table.add(f"{label}: --ae_features {bool(args.get('ae_features'))}", None, "not run here",
                      "no test config of ours for this command (its trainer config is a README recipe above)")
            continue
        cfg = to_plain(load_config([REPO / "configs" / "experiments" / "vmdls" / cfg_name]))
        ours = [p for p in cfg["postprocessors"] if isinstance(p, dict) and p.get("name") == "vmdls"]
        has_ae = bool(ours and ours[0].get("ae"))
        table.add(f"{label}: --ae_features {bool(args.get('ae_features'))} -> configs/experiments/vmdls/{cfg_name}",
                  0.0 if has_ae == bool(args.get("ae_features")) else None,
                  "equal" if has_ae == bool(args.get("ae_features")) else "DIFFERS",
                  f"ours: vmdls ae {ours[0].get('ae') if ours else None}")


#: experiment configs that run a README recipe at a documented reduced scale: what they change
REDUCED = {"test_ood_vmdls_fmnist_small.yml": "1,000-image subset, 20 epochs, 10 x 10 per batch (CPU)"}


def cifar_transforms(pub: Path, table: Table) -> None:
    """The CIFAR recipes' transforms (data_transforms['cifar']) against configs/benchmarks/vmdls_cifar10.yml."""
    import torchvision.transforms as T
    from PIL import Image

    from openood_ext.config import load_config, to_plain

    dt = load("data.data_transforms")
    pre = to_plain(load_config([REPO / "configs" / "benchmarks" / "vmdls_cifar10.yml"]).benchmark.preprocessor)
    arr = np.random.default_rng(5).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    pil = Image.fromarray(arr)
    ours_test = build_transform(pre, train=False)
    table.equal("CIFAR test transform (vmdls_cifar10 benchmark vs the published 'cifar' test transform)",
                diff(ours_test(pil), dt.data_transforms["cifar"]["test"](pil)))
    # training: published RandomCrop(32, 4) then flip; ours flip then crop. Fixed draws: crop at (top, left)
    # then flip equals flip then crop at the mirrored offset (the RNG consumes them in another order)
    norm = dt.data_transforms["cifar"]["train"].transforms[-1]
    padded = T.functional.pad(pil, 4)
    worst = 0.0
    for top, left, flip in ((0, 0, True), (3, 7, False), (8, 8, True), (5, 1, True)):
        crop = T.functional.crop(padded, top, left, 32, 32)
        a = norm(T.ToTensor()(T.functional.hflip(crop) if flip else crop))
        src = T.functional.hflip(padded) if flip else padded
        b = norm(T.ToTensor()(T.functional.crop(src, top, 8 - left if flip else left, 32, 32)))
        worst = max(worst, diff(a, b))
    kinds = [type(t).__name__ for t in build_transform(pre, train=True).transforms]
    table.equal(f"CIFAR training transform (ours {kinds}), 4 fixed draws", worst, tol=0,
                note="equal in distribution: flip and crop commute, the RNG order differs")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--published", required=True, type=Path, help="checkout of BGU-CS-VIL/vmdls")
    ap.add_argument("--bolts", type=Path, help="unpacked lightning-bolts (for its ResNet autoencoder components)")
    ap.add_argument("--out", type=Path, help="also write the table here (markdown)")
    ap.add_argument("--golden", type=Path, help="write the published side's values for the CI golden test")
    args = ap.parse_args(argv)
    if not (args.published / "models" / "vae.py").is_file():
        print(f"--published {args.published}: no models/vae.py there (expected a BGU-CS-VIL/vmdls checkout)")
        return 2
    torch.set_num_threads(1)
    have_bolts = install_shims(args.published, args.bolts)
    table, golden = Table(), {}
    encoders(args.published, table, golden)
    wrn_ensemble_draws(args.published, table, golden)
    autoencoders(args.published, table, have_bolts, golden)
    training_loss(args.published, table, golden)
    sampler(args.published, table)
    score(args.published, table)
    cifar_transforms(args.published, table)
    recipes(args.published, table)
    md = table.markdown()
    if args.out:
        args.out.write_text(md + "\n")
    if args.golden:
        torch.save(golden, args.golden)
        print(f"golden values -> {args.golden}")
    bad = [r for r in table.rows if r[2] == "DIFFERS"]
    print(f"{len(table.rows)} items: {len(table.rows) - len(bad)} equal or not run, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
