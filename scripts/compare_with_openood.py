"""Run OpenOOD v1.5's own postprocessors next to ours on the same checkpoint and image lists.

    python scripts/compare_with_openood.py --openood /path/to/OpenOOD --config configs/pipelines/test_ood.yml \
        [--subset id_train=2000 id_test=1000 ...] [--methods msp gram ...] [--rounds 2] [--out FILE.md] \
        [--members A.pt B.pt] [--dropout-times T] [key=value ...]

OpenOOD is not a dependency of openood_ext: the checkout's ``openood/postprocessors`` modules are
imported one by one (the package ``__init__`` files, which pull in every trainer and network, are
skipped), on the CPU (``.cuda()`` is made a no-op). Each OpenOOD postprocessor gets its default config
(``configs/postprocessors/<name>.yml``, APS off) and runs as its evaluator does: ``setup(net,
id_loader_dict, ood_loader_dict)`` then ``inference`` on every test split, each doing its own network
passes. Ours get the same hyperparameters and run the test_ood way: one pass per split with layer taps,
network re-runs only for input-gradient methods. The network is wrapped the way OpenOOD's
postprocessors expect (:class:`OpenOODNet`: ``forward(x, return_feature=True)``,
``return_feature_list``, ``get_fc``, ``get_fc_layer``, ``forward_threshold``); one-channel images are
given to OpenOOD as three identical channels (its ODIN/MDSEns step indexes channels 0-2; AdaScale gets
them as they are) and the network reads channel 0. OpenOOD's network wrappers (ReactNet, ASHNet,
ScaleNet, AdaScaleANet/LNet, DropoutNet) are applied as its evaluator does. MC dropout runs only on a
network with a dropout layer (OpenOOD's DropoutNet gets its p), deep ensembles only with ``--members``.
OpenOOD's GrOOD is given the ``dataset_name`` its setup reads but never sets, and the adapter lists the
network's layers (``get_layer_list``) for its synthetic prototype's forward pass from an intermediate layer.

Output: a markdown table (per-sample Spearman over all scored samples, max |delta|, AUROC per OOD set
for OpenOOD / ours and the difference, each method's wall time on both sides), then the timing: OpenOOD's
way and ours alternating, median of ``--rounds`` rounds each, and their ratio (the first line, ``WALL
TIME``), with ``--threads`` threads for torch and for numpy's BLAS, after both sides' one-time imports
(and our Gram kernel's load). Agreement is taken from the first round. Our side is timed as test_ood runs it: one
:class:`~openood_ext.postprocessors.schedule.Scheduler` over the methods both sides run (shared passes
with layer taps, input-gradient methods sharing their clean passes); the switch rows are scored after
it, untimed, since OpenOOD runs each method once.

Where OpenOOD's code departs from the paper, our row is the paper's default and a switch row
(OPENOOD_SWITCHES, e.g. ``dropout average: logits``) runs ours with the switch that reproduces OpenOOD.
Where the two cannot be compared like for like the table says so: OpenMax needs ``libmr`` (it does not
build on this machine): with ``--libmr-shim`` OpenOOD's OpenMax runs on our Weibull fit
(openood_ext's TailWeibull, libMR's fit_high/w_score) and is marked so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import io
import statistics
import tempfile
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: (our name, OpenOOD module (without _postprocessor), class, OpenOOD config file)
METHODS = [
    ("msp", "base", "BasePostprocessor", "msp"),
    ("temp_scaling", "temp_scaling", "TemperatureScalingPostprocessor", "temp_scaling"),
    ("odin", "odin", "ODINPostprocessor", "odin"),
    ("mds", "mds", "MDSPostprocessor", "mds"),
    ("mds_ensemble", "mds_ensemble", "MDSEnsemblePostprocessor", "mds_ensemble"),
    ("rmds", "rmds", "RMDSPostprocessor", "rmds"),
    ("gram", "gram", "GRAMPostprocessor", "gram"),
    ("ebo", "ebo", "EBOPostprocessor", "ebo"),
    ("gradnorm", "gradnorm", "GradNormPostprocessor", "gradnorm"),
    ("react", "react", "ReactPostprocessor", "react"),
    ("mls", "maxlogit", "MaxLogitPostprocessor", "mls"),
    ("klm", "kl_matching", "KLMatchingPostprocessor", "klm"),
    ("vim", "vim", "VIMPostprocessor", "vim"),
    ("knn", "knn", "KNNPostprocessor", "knn"),
    ("dice", "dice", "DICEPostprocessor", "dice"),
    ("ash", "ash", "ASHPostprocessor", "ash"),
    ("she", "she", "SHEPostprocessor", "she"),
    ("gen", "gen", "GENPostprocessor", "gen"),
    ("nnguide", "nnguide", "NNGuidePostprocessor", "nnguide"),
    ("relation", "relation", "RelationPostprocessor", "relation"),
    ("residual", "residual", "ResidualPostprocessor", "residual"),
    ("openmax", "openmax", "OpenMax", "openmax"),
    # OpenOOD's later registry
    ("scale", "scale", "ScalePostprocessor", "scale"),
    ("fdbd", "fdbd", "fDBDPostprocessor", "fdbd"),
    ("nci", "nci", "NCIPostprocessor", "nci"),
    ("gmm", "gmm", "GMMPostprocessor", "gmm"),
    ("vra", "vra", "VRAPostprocessor", "vra"),
    ("cfood", "cfood", "CFOODPostprocessor", "cfood"),
    ("ssd", "ssd", "SSDPostprocessor", "ssd"),
    ("rankfeat", "rankfeat", "RankFeatPostprocessor", "rankfeat"),
    ("grood", "grood", "GrOODPostprocessor", "grood.yaml"),
    ("grood_synthetic", "grood", "GrOODPostprocessor", "grood.yaml"),  # its code's synthetic OOD prototype
    # input perturbation, MC dropout, deep ensembles (dropout needs a network with a dropout layer,
    # ensemble the member checkpoints: --members)
    ("iodin", "iodin", "IODINPostprocessor", "iodin"),
    ("adascale", "adascale", "AdaScalePostprocessor", "adascale_a"),
    ("adascale_l", "adascale", "AdaScalePostprocessor", "adascale_l"),
    ("dropout", "dropout", "DropoutPostProcessor", "dropout"),
    ("ensemble", "ensemble", "EnsemblePostprocessor", "ensemble"),
]
#: OpenOOD modules not named <module>_postprocessor.py
OPENOOD_MODULE_FILES = {"grood": "grood"}
#: row label -> (our registered name, extra arguments) where the two differ
BUILD_AS = {"adascale_l": ("adascale", {"variant": "l"}), "grood_synthetic": ("grood", {})}
#: row label -> OpenOOD postprocessor_args other than its config file's (GrOOD's sources of the OOD prototype)
OPENOOD_ARGS = {"grood_synthetic": {"use_val_ood": False, "use_synthetic": True, "synthetic_name": "synthetic"}}

OPENOOD_BATCH = 200  # OpenOOD v1.5's evaluator batch size

#: OpenOOD's postprocessor_args -> our constructor arguments (same values)
ARG_NAMES = {"knn": {"K": "k"}, "odin": {"temperature": "temperature", "noise": "noise"},
             "mds_ensemble": {"noise": "noise"}, "gram": {"powers": "powers"}, "ebo": {"temperature": "temperature"},
             "react": {"percentile": "percentile"}, "vim": {"dim": "dim"}, "dice": {"p": "p"},
             "ash": {"percentile": "percentile"}, "she": {"metric": "metric"}, "gen": {"gamma": "gamma", "M": "M"},
             "nnguide": {"K": "K", "alpha": "alpha"}, "relation": {"pow": "pow"}, "residual": {"dim": "dim"},
             "scale": {"percentile": "percentile"}, "nci": {"alpha": "alpha"},
             "vra": {"percentile_high": "percentile_high", "percentile_low": "percentile_low"},
             "gmm": {"num_clusters_list": "num_clusters", "feature_type_list": "feature_type", "alpha_list": "alpha",
                     "reduce_dim_list": "reduce_dim"},
             "cfood": {"alpha": "alpha", "k": "k"}, "rankfeat": {"temperature": "temperature"},
             **{g: {k: k for k in ("k", "n_noise_samples", "sampling_ratio")} for g in ("grood", "grood_synthetic")},
             "iodin": {"temperature": "temperature", "noise": "noise"}, "dropout": {"dropout_times": "T"},
             **{a: {k: k for k in ("percentile", "k1", "k2", "lmbda", "o", "num_samples")}
                for a in ("adascale", "adascale_l")}}

#: extra rows: our method again with a switch that reproduces OpenOOD's code where it departs from the paper
#: (label suffix, our arguments), compared with the same OpenOOD scores
OPENOOD_SWITCHES = {"nnguide": [("first_batch", {"bank": "first_batch", "bank_batch_size": OPENOOD_BATCH})],
                    "fdbd": [("reduce: sum", {"reduce": "sum"})],
                    "vra": [("low: clip", {"low": "clip"})],
                    "gmm": [("density: openood", {"density": "openood"}),
                            ("pca_solver: full, pca_dtype: float64", {"pca_solver": "full", "pca_dtype": "float64"}),
                            ("density: openood, pca_solver: full, pca_dtype: float64",
                             {"density": "openood", "pca_solver": "full", "pca_dtype": "float64"})],
                    # OpenOOD's code averages logits; ours (the papers') the softmax outputs
                    "dropout": [("average: logits", {"average": "logits"})],
                    "ensemble": [("average: logits", {"average": "logits"})],
                    # OpenOOD's config averages OOD-val images; its code reads whole batches (one here); the
                    # "(exact index)" rows are compared with OpenOOD's code patched (OPENOOD_PATCHED)
                    "grood": [(f"ood_prototype: ood_val, n_noise_samples: one batch{x}",
                               {"ood_prototype": "ood_val", "n_noise_samples": OPENOOD_BATCH}) for x in ("", " (exact index)")],
                    # its code mixes the first whole batch of training images
                    "grood_synthetic": [(f"subset: first, n_noise_samples: one batch{x}",
                                         {"subset": "first", "n_noise_samples": OPENOOD_BATCH})
                                        for x in ("", " (exact index)")]}
#: switch rows compared with OpenOOD's code run again with a module attribute replaced (the switch row's
#: label -> (OpenOOD module, attribute, replacement factory taking the sklearn/torch module))
_EXACT_PCA = ("openood.postprocessors.mds_ensemble_postprocessor", "PCA",
              lambda PCA: (lambda n_components: PCA(n_components, svd_solver="full")))


def _exact_grood_index(cls):
    """OpenOOD's GrOOD searching an exact index of every training batch's gradients: its own searches an
    approximate IVF index and leaves out the batch it reaches when it trains that index."""
    import faiss

    class ExactIndex(cls):
        def index_grads(self):
            grads = [self._compute_grad(batch)["grads"] for batch in self.id_loader_dict["train"]]
            self.index = faiss.IndexFlatL2(self.penultimate_dim)
            self.index.add(np.concatenate(grads))

    return ExactIndex


_EXACT_GROOD = ("openood.postprocessors.grood", "GrOODPostprocessor", _exact_grood_index)
OPENOOD_PATCHED = {"gmm pca_solver: full, pca_dtype: float64": _EXACT_PCA,
                   "gmm density: openood, pca_solver: full, pca_dtype: float64": _EXACT_PCA,
                   "grood ood_prototype: ood_val, n_noise_samples: one batch (exact index)": _EXACT_GROOD,
                   "grood_synthetic subset: first, n_noise_samples: one batch (exact index)": _EXACT_GROOD}
#: what each patch changes, in the row's note (default: the exact PCA)
PATCH_NOTES = {"openood.postprocessors.grood": "OpenOOD run with an exact index of every training batch"}
#: notes on rows whose two sides compute different things by design
NOTES = {"ssd": "OpenOOD's ssd has no postprocess of its own: it scores MSP",
         "fdbd": "paper's mean over C-1 classes: OpenOOD's sum / (C-1)",
         "vra": "paper: low activations set to 0; OpenOOD raises them to the low threshold",
         "dropout": "our default (paper): mean of softmax; the two sides draw different masks",
         "ensemble": "our default (paper): mean of softmax",
         "grood": "ours (paper): synthetic OOD prototype; OpenOOD's config: OOD-val images; both: minus (squared) "
                  "nearest gradient distance, OpenOOD's from an approximate faiss IVF index",
         "grood_synthetic": "OpenOOD with use_synthetic (its mixup at a fixed 0.5), ours with the defaults"}

#: OpenOOD's network wrappers, as its evaluator applies them (evaluation_api/evaluator.py; DropoutNet:
#: networks/utils.py): our name -> (module, class); DropoutNet also takes the config's dropout_p
OPENOOD_WRAPPERS = {"react": ("openood.networks.react_net", "ReactNet"), "ash": ("openood.networks.ash_net", "ASHNet"),
                    "scale": ("openood.networks.scale_net", "ScaleNet"),
                    "adascale": ("openood.networks.adascale_net", "AdaScaleANet"),
                    "adascale_l": ("openood.networks.adascale_net", "AdaScaleLNet"),
                    "dropout": ("openood.networks.dropout_net", "DropoutNet")}
#: OpenOOD postprocessors whose inference fails with autograd on (their conf cannot become numpy)
NO_GRAD_INFERENCE = ("gmm", "ensemble")
#: OpenOOD postprocessors given one-channel images as they are: AdaScale perturbs the elements of smallest
#: gradient, and copied channels (gradient 0) would take every step
ONE_CHANNEL_AS_IS = ("adascale", "adascale_l")
GRAM_HOLDOUT = "OpenOOD run on our hold-out samples"


def row_label(name: str, module: str | None, note: str) -> str:
    """The table row (and our score key) of a plan: the method, or ``method switch`` for a switch row."""
    return name if module is not None or note == GRAM_HOLDOUT else f"{name} {note}"


#: methods that re-run the network: input perturbation (with gradients), MC dropout's passes, ensemble members
RERUN_METHODS = ("odin", "mds_ensemble", "iodin", "adascale", "adascale_l", "dropout", "ensemble")


class AttrDict(dict):
    """Config object as OpenOOD's code reads it (``config.a.b`` and ``config['a']``)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    @classmethod
    def wrap(cls, obj):
        if isinstance(obj, dict):
            return cls({k: cls.wrap(v) for k, v in obj.items()})
        if isinstance(obj, list):
            return [cls.wrap(v) for v in obj]
        return obj


def import_openood(root: Path, libmr_shim: bool):
    """Import OpenOOD's postprocessor modules from a checkout, without its package __init__ files."""
    src = root / "openood"
    if not (src / "postprocessors" / "base_postprocessor.py").is_file():
        raise SystemExit(f"{root}: not an OpenOOD checkout (no openood/postprocessors/base_postprocessor.py)")
    for name in ("openood", "openood.postprocessors", "openood.utils", "openood.preprocessors", "openood.networks"):
        module = types.ModuleType(name)
        module.__path__ = [str(src / name.split(".", 1)[1].replace(".", "/")) if "." in name else str(src)]
        sys.modules[name] = module
    # CPU: OpenOOD moves every batch and buffer with .cuda()
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.FloatTensor = lambda *a, **k: torch.FloatTensor(*a, **k)
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu
    if libmr_shim and "libmr" not in sys.modules and importlib.util.find_spec("libmr") is None:
        from openood_ext.postprocessors.openmax import TailWeibull

        class MR:
            def fit_high(self, data, size):
                self.model = TailWeibull(np.asarray(data)[-int(size):])

            def w_score(self, x):
                return float(self.model.w_score(np.asarray([x]))[0])

        shim = types.ModuleType("libmr")
        shim.__spec__ = importlib.machinery.ModuleSpec("libmr", None)
        shim.MR = MR
        sys.modules["libmr"] = shim
    if importlib.util.find_spec("statsmodels") is None:  # AdaScale's ECDF: F(v) = #{fitted <= v} / n
        class ECDF:
            def __init__(self, x):
                self.x = np.sort(np.asarray(x, dtype=np.float64))

            def __call__(self, v):
                return np.searchsorted(self.x, np.asarray(v, dtype=np.float64), side="right") / len(self.x)

        for name in ("statsmodels", "statsmodels.distributions", "statsmodels.distributions.empirical_distribution"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["statsmodels.distributions.empirical_distribution"].ECDF = ECDF

    def import_module(name: str):
        module = importlib.import_module(name)
        if getattr(module, "torch", None) is torch:
            module.torch = _TorchOnCPU()
        return module

    return import_module


class _SeededRandperm:
    """A module's ``torch`` whose ``randperm`` draws from a fresh generator seeded with ``seed`` (as ours)."""

    def __init__(self, inner, seed: int):
        self.inner, self.seed = inner, seed

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def randperm(self, n, **kwargs):
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed), **kwargs)


class _TorchOnCPU:
    """``torch`` for OpenOOD's modules, with tensor factories' ``device='cuda'`` turned into the CPU."""

    FACTORIES = ("ones", "zeros", "tensor", "empty", "full", "arange", "rand", "randn", "as_tensor")

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name not in self.FACTORIES:
            return attr

        def on_cpu(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return attr(*args, **kwargs)

        return on_cpu


def openood_config(root: Path, name: str, dataset: str, overrides: dict) -> AttrDict:
    file = name if name.endswith((".yml", ".yaml")) else f"{name}.yml"  # grood's is grood.yaml
    data = yaml.safe_load((root / "configs" / "postprocessors" / file).read_text())["postprocessor"]
    args = dict(data.get("postprocessor_args") or {})
    args.update(overrides)
    data["postprocessor_args"] = args
    data["APS_mode"] = False
    return AttrDict.wrap({"postprocessor": data, "dataset": {"name": dataset}, "network": {"name": "ours"}})


class OpenOODNet(torch.nn.Module):
    """Our network as OpenOOD's postprocessors call it."""

    def __init__(self, net: torch.nn.Module, feature_layers: list[str], in_channels: int):
        super().__init__()
        self.net, self.feature_layers, self.in_channels = net, feature_layers, in_channels

    def forward(self, x, return_feature=False, return_feature_list=False):
        from openood_ext.postprocessors.layer_features import LayerTaps
        x = x[:, : self.in_channels]
        if return_feature_list:
            with LayerTaps(self.net, self.feature_layers, clone=True) as taps:
                logits = self.net(x)
                return logits, taps.pop()
        logits, feat = self.net(x, return_feature=True)
        return (logits, feat) if return_feature else logits

    def forward_threshold(self, x, threshold):
        _, feat = self.net(x[:, : self.in_channels], return_feature=True)
        return self.get_fc_layer()(feat.clip(max=threshold))

    def get_fc_layer(self):
        return self.net.get_fc_layer()

    def get_layer_list(self):
        """The modules in forward order, which OpenOOD's GrOOD walks (in place of ``children()``, our whole network)
        to continue a forward pass from an intermediate layer for its synthetic OOD prototype, after keeping
        the input's own channels: DigitsCNN's Sequential ``body`` then ``fc``; our ResNets' stem (its ReLU is
        functional), stages, pool and ``fc``; none for other networks."""
        net, first = self.net, _FirstChannels(self.in_channels)
        body, fc = getattr(net, "body", None), getattr(net, "fc", None)
        if isinstance(body, torch.nn.Sequential) and isinstance(fc, torch.nn.Linear):
            return [first, *body, fc]
        resnet = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc")
        if all(isinstance(getattr(net, a, None), torch.nn.Module) for a in resnet):
            return [first, net.conv1, net.bn1, torch.nn.ReLU(), net.layer1, net.layer2, net.layer3, net.layer4,
                    net.avgpool, torch.nn.Flatten(), net.fc]
        return []

    # RankFeat's ResNet API: blocks 3 and 4 are the two stages before the global pool (our rankfeat's
    # default layers [-3, -2]); ``layer4`` continues the last input's forward from an edited block-3 map
    def intermediate_forward(self, x, layer_index):
        from openood_ext.postprocessors.layer_features import LayerTaps
        if layer_index not in (3, 4):
            raise ValueError(f"the adapter maps only RankFeat's blocks 3 and 4, got {layer_index}")
        self._last_input = x[:, : self.in_channels]
        with LayerTaps(self.net, [self.feature_layers[1:][layer_index - 6]]) as taps:
            return taps.run(self._last_input)[0]

    def layer4(self, block3):
        start, stop = self.feature_layers[1:][-3], self.feature_layers[1:][-2]
        modules, got = dict(self.net.named_modules()), []

        class Done(Exception):
            pass

        def catch(_m, _i, out):
            got.append(out)
            raise Done

        hooks = [modules[start].register_forward_hook(lambda _m, _i, _o: block3),
                 modules[stop].register_forward_hook(catch)]
        try:
            self.net(self._last_input)
        except Done:
            pass
        finally:
            for h in hooks:
                h.remove()
        return got[0]

    def avgpool(self, t):
        return t.mean(dim=(2, 3), keepdim=True)

    @property
    def feature_size(self):  # OpenOOD's AdaScale reads backbone.feature_size
        return self.get_fc_layer().in_features

    @property
    def fc(self):  # OpenOOD's ReactNet/ASHNet read backbone.fc
        return self.net.get_fc_layer()

    def get_fc(self):
        fc = self.get_fc_layer()
        return fc.weight.detach().cpu().numpy(), fc.bias.detach().cpu().numpy()


class _FirstChannels(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x):
        return x[:, : self.channels]


class DictLoader:
    """One of our loaders as OpenOOD's: dict batches, ``batch_size``, ``dataset`` with len and name;
    one-channel images repeated to three unless ``repeat`` is off."""

    def __init__(self, make_loader, name: str, channels: int, repeat: bool = True):
        self.make, self.batch_size, self.channels = make_loader, OPENOOD_BATCH, channels if repeat else 0
        self.loader = make_loader(OPENOOD_BATCH)
        self.dataset = _Sized(name=name, n=len(self.loader.dataset))

    def __len__(self):
        return len(self.loader)

    def _batches(self):
        for images, labels, *_ in self.loader:
            if len(images) == 0:
                continue
            if self.channels == 1:
                images = images.repeat(1, 3, 1, 1)
            yield {"data": images, "data_aux": images, "label": torch.as_tensor(labels).long()}

    def __iter__(self):
        return _SizedIter(self._batches(), len(self.loader))  # OpenMax takes len(iter(loader))


class _SizedIter:
    def __init__(self, it, n):
        self.it, self.n = it, n

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def __len__(self):
        return self.n


class _Sized(types.SimpleNamespace):
    def __len__(self):
        return self.n


def write_subset_lists(bench, sizes: dict, out_dir: Path) -> dict:
    """Evenly spaced subsets of the named splits' image lists (class order kept), written to out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = {}
    for split in bench.splits():
        n = sizes.get(split.name) or sizes.get(split.group)
        if not n or not Path(split.imglist).is_file():
            continue
        lines = Path(split.imglist).read_text().splitlines()
        idx = np.linspace(0, len(lines) - 1, min(int(n), len(lines))).round().astype(int)
        target = out_dir / Path(split.imglist).name
        target.write_text("\n".join(lines[i] for i in idx) + "\n")
        chosen[split.name] = len(idx)
    return chosen


def write_members(cfg, checkpoints: list[str], root: Path) -> list[str]:
    """Our member checkpoints in OpenOOD's ensemble layout, ``<root>/<name>/best.ckpt`` with the keys of its
    wrapper (``net.`` + ours); returns the names."""
    from openood_ext.networks.checkpoint import load_checkpoint
    from openood_ext.pipelines.context import build_network
    names = []
    for i, path in enumerate(checkpoints):
        member = build_network(cfg, "cpu")
        load_checkpoint(path, member)
        (root / f"net{i}").mkdir(parents=True)
        torch.save({f"net.{k}": v for k, v in member.state_dict().items()}, root / f"net{i}" / "best.ckpt")
        names.append(f"net{i}")
    return names


def _auroc(id_conf: np.ndarray, ood_conf: np.ndarray) -> float:
    """AUROC in % (ID positive), NaN when either side has non-finite scores."""
    from openood_ext.evaluators.metrics import ood_metrics
    if not (np.isfinite(id_conf).all() and np.isfinite(ood_conf).all()):
        return float("nan")
    return 100 * ood_metrics(id_conf, ood_conf)["auroc"]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openood", required=True, type=Path, help="path of an OpenOOD checkout")
    parser.add_argument("--config", nargs="+", default=["configs/pipelines/test_ood.yml"])
    parser.add_argument("--subset", nargs="*", default=[], help="SPLIT_OR_GROUP=N, e.g. id_train=2000 far=500")
    parser.add_argument("--methods", nargs="*",
                        help="row names of METHODS (default: all; adascale brings adascale_l, grood grood_synthetic)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--libmr-shim", action="store_true", help="run OpenOOD's OpenMax on our Weibull fit")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--dropout-times", type=int, help="MC dropout: T for both sides (default OpenOOD's 5)")
    parser.add_argument("--members", nargs="*", default=[],
                        help="ensemble: member checkpoints (ours read them; OpenOOD gets them as <root>/<name>/best.ckpt)")
    args, rest = parser.parse_known_args(argv)
    # --subset takes SPLIT=N items; config overrides (dotted keys) written after it belong to the config
    rest += [s for s in args.subset if "." in s.split("=", 1)[0]]
    args.subset = [s for s in args.subset if "." not in s.split("=", 1)[0]]
    torch.set_num_threads(args.threads)
    try:  # numpy/scipy's BLAS too (scikit-learn's PCA and mixtures on both sides): unbounded, its threads
        from threadpoolctl import threadpool_limits  # oversubscribe a shared machine and swamp the timing
        threadpool_limits(args.threads)
    except ImportError:
        pass

    from openood_ext.config import cli_overrides, load_config
    from openood_ext.datasets.benchmark import resolve_path
    from openood_ext.networks.checkpoint import load_checkpoint
    from openood_ext.pipelines.context import build_benchmark, build_network
    from openood_ext.postprocessors.layer_features import resolve_layers, stage_layers
    from openood_ext.utils.runtime import get_logger

    cfg = load_config([resolve_path(Path(c)) for c in args.config], cli_overrides(rest))
    bench = build_benchmark(cfg)
    subset_sizes = {}
    if args.subset:
        sizes = {k: int(v) for k, v in (s.split("=", 1) for s in args.subset)}
        tag = "_".join(f"{k}{v}" for k, v in sorted(sizes.items()))  # concurrent runs of other sizes don't clash
        sub_dir = Path(tempfile.gettempdir()) / f"compare_openood_{bench.name}_{tag}"
        subset_sizes = write_subset_lists(bench, sizes, sub_dir)
        dirs = list(cfg.benchmark.imglist_dir) if not isinstance(cfg.benchmark.imglist_dir, str) else [cfg.benchmark.imglist_dir]
        cfg.benchmark.imglist_dir = [str(sub_dir), *dirs]
        bench = build_benchmark(cfg)
    net = build_network(cfg, "cpu")
    ckpt = Path(cfg.network.checkpoint)
    load_checkpoint(resolve_path(ckpt) if not ckpt.is_file() else ckpt, net)
    net.eval()
    get_logger().setLevel("WARNING")

    splits = {s.name: s for s in bench.splits() if not s.is_ood or bench.missing_reason(s) is None}
    tests = [s for s in splits.values() if s.group in ("near", "far")]
    channels = int(cfg.benchmark.preprocessor.channels)
    example = next(iter(bench.loader(splits["id_train"], batch_size=2)))[0]
    feature_layers = resolve_layers(net, ["stem"], example) + stage_layers(net, example)
    feat_dim = net.get_fc_layer().in_features

    our_batch = int(cfg.get("batch_size", 256))

    def loader(name, batch_size=None):
        return bench.loader(splits[name], batch_size=batch_size or our_batch, num_workers=0)

    importer = import_openood(args.openood.resolve(), args.libmr_shim)
    info = importer("openood.postprocessors.info")
    info.num_classes_dict.setdefault(bench.name, bench.num_classes)
    norm = importer("openood.preprocessors.transform").normalization_dict
    pre = cfg.benchmark.preprocessor
    norm.setdefault(bench.name, [list(pre.mean) * (3 if channels == 1 else 1),
                                 list(pre.std) * (3 if channels == 1 else 1)])
    adapter = OpenOODNet(net, feature_layers, channels).eval()

    names = args.methods or [m[0] for m in METHODS]
    if "adascale" in names and "adascale_l" not in names:
        names.append("adascale_l")
    if "grood" in names and "grood_synthetic" not in names:
        names.append("grood_synthetic")
    plans = []
    for ours, module, cls, conf in METHODS:
        if ours not in names:
            continue
        overrides, note = {}, ""
        if ours == "dropout":
            from openood_ext.postprocessors.dropout import dropout_layers
            if not dropout_layers(net):
                print("dropout: skipped (the network has no dropout layer; e.g. +network.dropout=0.5 with a "
                      "checkpoint trained so)")
                continue
            overrides["dropout_p"] = next(m.p for m in net.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd))
            if args.dropout_times:  # many passes: both sides near the expectation, the masks' noise averaged out
                overrides["dropout_times"] = args.dropout_times
        if ours == "ensemble":
            if not args.members:
                print("ensemble: skipped (give the member checkpoints with --members)")
                continue
            member_root = Path(tempfile.mkdtemp(prefix="compare_openood_members_"))
            overrides.update(network_name="ours", checkpoint_root=str(member_root),
                             checkpoints=write_members(cfg, args.members, member_root), num_networks=len(args.members))
        if ours in ("vim", "residual"):
            default = yaml.safe_load((args.openood / "configs/postprocessors" / f"{conf}.yml").read_text())
            dim = default["postprocessor"]["postprocessor_args"]["dim"]
            if dim >= feat_dim:  # OpenOOD's default leaves an empty residual space on this network
                overrides["dim"] = feat_dim // 2
                note = f"dim {dim} >= D={feat_dim}: both use {feat_dim // 2}"
        config = openood_config(args.openood, conf, bench.name, overrides)
        config.postprocessor.postprocessor_args.update(OPENOOD_ARGS.get(ours, {}))
        if ours.startswith("grood"):  # its setup reads the dataset's image size and class count
            config.dataset.update(image_size=int(pre.image_size), num_classes=bench.num_classes)
        our_args = {ARG_NAMES.get(ours, {}).get(k): v for k, v in config.postprocessor.postprocessor_args.items()
                    if ARG_NAMES.get(ours, {}).get(k)}
        if ours == "mds_ensemble":
            our_args["input_std"] = 0.5  # OpenOOD hard-codes 0.5 for the step
        if ours == "fdbd":  # OpenOOD's boolean distance_as_normalizer
            our_args["normalizer"] = ("distance_to_mean" if config.postprocessor.postprocessor_args.distance_as_normalizer
                                      else "norm")
        if ours in ("adascale", "adascale_l"):
            our_args["num_samples"] = int(our_args.get("num_samples", 5000))
        if ours == "ensemble":
            our_args["checkpoints"] = [str(m) for m in args.members]
        note = note or NOTES.get(ours, "")
        if ours == "openmax":
            if "libmr" not in sys.modules and importlib.util.find_spec("libmr") is None:
                print("openmax: skipped (OpenOOD's needs libmr; pass --libmr-shim)")
                continue
            note = "libmr shim (our Weibull fit)" if args.libmr_shim else ""
            our_args["backend"] = "scipy"
        plans.append((ours, our_args, module, cls, config, note))
        for suffix, switch in OPENOOD_SWITCHES.get(ours, ()):
            if switch.get("ood_prototype") == "ood_val" and "ood_val" not in splits:
                print(f"{ours} {suffix}: skipped (the benchmark has no readable ood_val split)")
                continue
            plans.append((ours, {**our_args, **switch}, None, None, None, suffix))

    def loader_dicts(repeat: bool = True):
        id_loaders = {k: DictLoader(lambda b, k=k: loader(k, b), k, channels, repeat)
                      for k in ("id_train", "id_val", "id_test")}
        id_dict = {"train": id_loaders["id_train"], "val": id_loaders["id_val"], "test": id_loaders["id_test"]}
        ood_dict = {"near": {}, "far": {}}
        for s in tests:
            ood_dict[s.group][s.name] = DictLoader(lambda b, n=s.name: loader(n, b), s.name, channels, repeat)
        if "ood_val" in splits:
            ood_dict["val"] = DictLoader(lambda b: loader("ood_val", b), "ood_val", channels, repeat)
        return id_dict, ood_dict

    def run_openood(only: str | None = None):
        dicts = {repeat: loader_dicts(repeat) for repeat in {ours not in ONE_CHANNEL_AS_IS for ours, *_ in plans}}
        scores, times = {}, {}
        for ours, _, module, cls, config, _ in plans:
            if module is None or (only is not None and ours != only):
                continue
            t0 = time.perf_counter()
            # OpenOOD's unseeded torch draws (DropoutNet's masks) repeat from run to run; numpy's global
            # generator is left alone: GMM's unseeded randomized PCA is what its switch rows isolate
            torch.manual_seed(0)
            id_dict, ood_dict = dicts[ours not in ONE_CHANNEL_AS_IS]
            model = adapter
            if ours in OPENOOD_WRAPPERS:
                wrapper_module, wrapper = OPENOOD_WRAPPERS[ours]
                extra = (config.postprocessor.postprocessor_args.dropout_p,) if ours == "dropout" else ()
                model = getattr(importer(wrapper_module), wrapper)(adapter, *extra)
            oo_module = importer(f"openood.postprocessors.{OPENOOD_MODULE_FILES.get(module, module + '_postprocessor')}")
            if ours == "cfood":  # its unseeded torch.randperm (on the global generator) draws our seed-0 set
                oo_module.torch = _SeededRandperm(oo_module.torch, seed=0)
            pp = getattr(oo_module, cls)(config)
            if ours.startswith("grood"):  # the end of its setup reads self.dataset_name, which nothing sets
                pp.dataset_name = bench.name
            try:
                # GrOOD's synthetic prototype prints seven lines per training image
                with contextlib.redirect_stdout(io.StringIO()) if ours.startswith("grood") else contextlib.nullcontext():
                    pp.setup(model, id_dict, ood_dict)
                if ours in ("adascale", "adascale_l"):  # its evaluator sets the point before scoring (APS or not)
                    a = config.postprocessor.postprocessor_args
                    pp.set_hyperparam([list(a.percentile), a.k1, a.k2, a.lmbda, a.o])
                with torch.no_grad() if ours in NO_GRAD_INFERENCE else contextlib.nullcontext():
                    out = {"id_test": pp.inference(model, id_dict["test"], progress=False)[1]}
                    for s in tests:
                        out[s.name] = pp.inference(model, ood_dict[s.group][s.name], progress=False)[1]
            except Exception as exc:  # a broken OpenOOD method (ssd) gets a row saying so
                openood_failures[ours] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            times[ours] = time.perf_counter() - t0
            scores[ours] = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in out.items()}
        return scores, times

    def run_ours():
        """Our scores, as test_ood computes them: one Scheduler over every default row (one pass per split
        with layer taps, input-gradient methods sharing their clean passes), timed; then the switch rows
        (our method again with a switch reproducing OpenOOD's code), untimed, as OpenOOD runs each method
        once."""
        from openood_ext.postprocessors import POSTPROCESSORS
        from openood_ext.postprocessors.schedule import LoaderSource, Scheduler
        test_names = ["id_test", *[s.name for s in tests]]

        def schedule(rows):
            pps = {}
            for name, a, module, _, _, note in rows:
                registered, extra = BUILD_AS.get(name, (name, {}))
                pps[row_label(name, module, note)] = POSTPROCESSORS.build({"name": registered, **extra, **a})
            used = ["id_train", "id_val", *test_names, *(["ood_val"] if "ood_val" in splits else [])]
            source = LoaderSource(net, {k: loader(k) for k in used})  # (not csid: its images may be absent)
            sched = Scheduler(pps, source, net, "cpu", clock=time.perf_counter)
            t = time.perf_counter()
            sched.prepare(test_names)
            shared = time.perf_counter() - t
            for label in pps:
                sched.score(label)
            if sched.result.gradient_seconds:  # the input-gradient methods rode the shared passes: their
                shared -= sum(sched.result.seconds[k] for k in sched.gradient_group)  # own work is in their rows
            return sched, pps, shared

        t0, c0 = time.perf_counter(), time.process_time()
        sched, pps, shared = schedule([p for p in plans if p[2] is not None])
        t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
        network = [k for k in pps if sched.routes[k] == "network"]
        t_grad = sum(sched.result.seconds[k] for k in network) + sum(sched.result.shared_seconds.values())
        parts = {"shared passes (taps included)": shared, **sched.result.shared_seconds,
                 **{k: v for k, v in sched.result.seconds.items() if sched.routes[k] != "taps"}}
        our_parts.append(parts)
        # label -> seconds of its own work, or what it rides on: the shared passes (taps) or, in part, the
        # clean passes with gradients it shares with the other input-gradient methods
        our_times = {k: (f"{v:.2f} in the shared pass" if sched.routes[k] == "taps" else
                         f"{v:.2f} + {'the shared pass' if sched.result.gradient_seconds else 'shared gradient pass'}"
                         if k in sched.gradient_group else f"{v:.2f}")
                     for k, v in sched.result.seconds.items()}
        scores = {k: sched.result.conf(k) for k in pps}
        hparams = {k: pp.hyperparameters() for k, pp in pps.items()}
        switches = [p for p in plans if p[2] is None]
        if switches:
            extra, extra_pps, _ = schedule(switches)
            scores.update({k: extra.result.conf(k) for k in extra_pps})
            hparams.update({k: pp.hyperparameters() for k, pp in extra_pps.items()})
        return scores, (t_ours, t_grad, c_ours), hparams, our_times

    def openood_gram_on_our_holdout():
        """OpenOOD's Gram with its ``random.sample`` replaced by our hold-out draw (to isolate that cause)."""
        from openood_ext.datasets.imglist import read_imglist
        from openood_ext.postprocessors.gram import _HoldoutStream
        gram_plan = next(p for p in plans if p[0] == "gram")
        labels = np.array([e.label for e in read_imglist(splits["id_train"].imglist)])
        mask = _HoldoutStream(float(hparams["gram"]["holdout"]), int(hparams["gram"]["seed"])).take(len(labels)).numpy()
        order = list(dict.fromkeys(labels.tolist()))  # OpenOOD's Counter order: first appearance

        class OurHoldout:
            def __init__(self):
                self.classes = iter(order)

            def sample(self, population, k):
                c = next(self.classes)
                return [int(i) for i in np.flatnonzero(mask[labels == c])]

        module = importer("openood.postprocessors.gram_postprocessor")
        saved, module.random = module.random, OurHoldout()
        try:
            pp = getattr(module, gram_plan[3])(gram_plan[4])
            id_dict = {"train": DictLoader(lambda b: loader("id_train", b), "id_train", channels)}
            pp.setup(adapter, id_dict, {})
            out = {"id_test": pp.inference(adapter, DictLoader(lambda b: loader("id_test", b), "id_test", channels),
                                           progress=False)[1]}
            for s in tests:
                out[s.name] = pp.inference(adapter, DictLoader(lambda b, n=s.name: loader(n, b), s.name, channels),
                                           progress=False)[1]
        finally:
            module.random = saved
        return {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in out.items()}

    # one-time costs out of the timed rounds on both sides: OpenOOD's modules imported, our libraries
    # imported and Gram's compiled kernel loaded (as `bench postprocessors` does)
    for ours, _, module, _, _, _ in plans:
        if module is not None:
            importer(f"openood.postprocessors.{OPENOOD_MODULE_FILES.get(module, module + '_postprocessor')}")
        if ours in OPENOOD_WRAPPERS:
            importer(OPENOOD_WRAPPERS[ours][0])
    for library in ("faiss", "sklearn.linear_model", "sklearn.covariance", "sklearn.mixture", "sklearn.decomposition",
                    "scipy.stats"):
        with contextlib.suppress(ImportError):
            importlib.import_module(library)
    from openood_ext.postprocessors.gram_rowsums import load_kernel
    load_kernel()

    rounds_openood, rounds_ours, first, our_parts = [], [], None, []
    openood_failures: dict[str, str] = {}
    grad_free_openood, grad_free_ours = [], []
    cpu_openood, cpu_ours = [], []
    for r in range(args.rounds):
        t, c = time.perf_counter(), time.process_time()
        oo_scores, oo_times = run_openood()
        rounds_openood.append(time.perf_counter() - t)
        cpu_openood.append(time.process_time() - c)
        our_scores, (t_ours, t_grad, c_ours), hparams, our_times = run_ours()
        cpu_ours.append(c_ours)
        rounds_ours.append(t_ours)
        grad_free_ours.append(t_ours - t_grad)
        grad_free_openood.append(sum(t for k, t in oo_times.items() if k not in RERUN_METHODS))
        print(f"round {r + 1}: OpenOOD way {rounds_openood[-1]:.1f} s, ours {t_ours:.1f} s", flush=True)
        if first is None:
            first = (oo_scores, our_scores, oo_times, hparams, our_times)
    oo_scores, our_scores, oo_times, hparams, our_times = first

    t_oo, t_us = statistics.median(rounds_openood), statistics.median(rounds_ours)
    free = len([k for k in oo_times if k not in RERUN_METHODS])
    gf_oo, gf_us = statistics.median(grad_free_openood), statistics.median(grad_free_ours)
    timing = [(f"WALL TIME, the {len(oo_times)} methods both sides ran (each side's setup, passes and scoring; "
               f"medians of {args.rounds} round(s) measured in this run): OpenOOD {t_oo:.1f} s, ours {t_us:.1f} s: "
               f"ours takes {t_oo / t_us:.1f}x less"),
              (f"timing ({args.rounds} rounds, alternating, {args.threads} thread(s)): OpenOOD way "
               f"{', '.join(f'{t:.1f}' for t in rounds_openood)} s, ours "
               f"{', '.join(f'{t:.1f}' for t in rounds_ours)} s; medians {t_oo:.1f} s vs {t_us:.1f} s: "
               f"ratio {t_oo / t_us:.1f}x"),
              (f"without the methods that re-run the network {RERUN_METHODS} ({free} methods): OpenOOD way "
               f"{gf_oo:.1f} s vs ours {gf_us:.1f} s (medians): ratio {gf_oo / gf_us:.1f}x"),
              (f"process CPU time (robust on a shared machine): OpenOOD way "
               f"{', '.join(f'{t:.1f}' for t in cpu_openood)} s, ours {', '.join(f'{t:.1f}' for t in cpu_ours)} s; "
               f"medians ratio {statistics.median(cpu_openood) / statistics.median(cpu_ours):.1f}x"),
              "OpenOOD time per method (round 1, s): " + ", ".join(f"{k} {v:.1f}" for k, v in oo_times.items()),
              "our time per part (round 1, s): " + ", ".join(f"{k} {v:.2f}" for k, v in our_parts[0].items()),
              "our hyperparameters: " + "; ".join(f"{k} {v}" for k, v in hparams.items() if v)]
    print("\n".join(timing), flush=True)  # before the table, so a failure there loses no timing

    for label, (module_name, attr, make) in OPENOOD_PATCHED.items():  # OpenOOD's code once more, patched
        name = label.split(" ", 1)[0]
        if name in oo_scores and label in our_scores:
            module = importer(module_name)
            saved = getattr(module, attr)
            setattr(module, attr, make(saved))
            try:
                oo_scores[label] = run_openood(only=name)[0][name]
            finally:
                setattr(module, attr, saved)
    if "gram" in oo_scores:  # OpenOOD's Gram once more, holding out exactly our held-out samples
        oo_scores["gram same holdout"] = openood_gram_on_our_holdout()
        plans.append(("gram", None, "gram", None, None, GRAM_HOLDOUT))

    lines = [f"benchmark {bench.name}, checkpoint {cfg.network.checkpoint}, network {cfg.network.name}"
             f" (features {feat_dim}-d), samples: "
             + ", ".join(f"{k} {len(loader(k).dataset)}" for k in ["id_train", "id_val", "id_test", *[s.name for s in tests]])
             + (f" (subsets: {subset_sizes})" if subset_sizes else ""), ""]
    header = "| method | Spearman | max abs delta | " + " | ".join(
        f"{s.name} AUROC OpenOOD / ours (diff)" for s in tests) + " | wall s, OpenOOD / ours (round 1) | note |"
    lines += [header, "|" + "---|" * (5 + len(tests))]

    def wall(label: str, ours: str) -> str:
        if label not in our_times or ours not in oo_times:  # a switch row: not timed (OpenOOD runs each method once)
            return "-"
        return f"{oo_times[ours]:.2f} / {our_times[label]}"
    for ours, _, module, _, _, note in plans:
        label = row_label(ours, module, note)
        if ours in openood_failures:
            lines.append(f"| {label} | - | - | " + " | ".join("- / " + f"{_auroc(our_scores[label]['id_test'], our_scores[label][s.name]):.2f}"
                                                          for s in tests)
                         + f" | - | OpenOOD's code fails: {openood_failures[ours]}; {note} |")
            continue
        ref = oo_scores["gram same holdout" if note == GRAM_HOLDOUT else label if label in OPENOOD_PATCHED else ours]
        if label in OPENOOD_PATCHED:
            note += "; " + PATCH_NOTES.get(OPENOOD_PATCHED[label][0], "OpenOOD run with the same (exact) PCA")
        got = our_scores[ours if note == GRAM_HOLDOUT else label]
        a = np.concatenate([ref[k] for k in ref])
        b = np.concatenate([got[k] for k in ref])
        finite = np.isfinite(a) & np.isfinite(b)
        if not finite.all():  # e.g. a random network's overflow; compare the rest and say so
            note = (note + "; " if note else "") + (f"non-finite scores: OpenOOD {int((~np.isfinite(a)).sum())}, "
                                                    f"ours {int((~np.isfinite(b)).sum())} of {len(a)}")
        cells = []
        for s in tests:
            x, y = (_auroc(sc["id_test"], sc[s.name]) for sc in (ref, got))
            cells.append(f"{x:.2f} / {y:.2f} ({y - x:+.2f})")
        lines.append(f"| {label} | {spearman(a[finite], b[finite]):.4f} | {np.max(np.abs(a - b)[finite]):.3g} | "
                     + " | ".join(cells) + f" | {wall(label, ours) if note != GRAM_HOLDOUT else '-'} | {note} |")
    lines += ["", *timing]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
