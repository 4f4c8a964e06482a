"""Every registered postprocessor, built from its default config, fits on tiny ID outputs of a tiny random network
and scores ID and OOD samples: one finite float confidence per sample (one test id per postprocessor).

Methods that score from images (``needs_network``) or from the shared pass's layer taps (``uses_taps``) get the
network and pipeline-style loaders through ``attach_network``, as in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import image_loader

from openood_ext.features import extract_outputs
from openood_ext.networks import NETWORKS
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.schedule import split_result
from sweep_helpers import builtin_names


# the tiny network each postprocessor is tried on (default: a DigitsCNN with 8-d features)
NETWORK_SPECS = {
    "default": {"name": "digits_cnn", "num_classes": 4, "in_channels": 1, "width": 2},
    # vmdls scores only networks with ensemble()/first_layer() (its own VMDLS network)
    "vmdls": {"name": "vmdls", "encoder": "mnist_conv", "num_classes": 4, "in_channels": 1, "image_size": 8,
              "latent_dim": 4},
    # MC dropout needs dropout layers
    "dropout": {"name": "digits_cnn", "num_classes": 4, "in_channels": 1, "width": 2, "dropout": 0.5},
}
# name -> (config overrides, network spec key); anything not listed: defaults on the default network
OVERRIDES = {
    "knn": ({"k": 5}, "default"),
    "npos": ({"k": 5}, "default"),
    "nnguide": ({"K": 5}, "default"),
    "openmax": ({"tailsize": 5, "backend": "scipy"}, "default"),  # libmr is optional; scipy is the fallback
    "vim": ({"dim": 4}, "default"),
    "residual": ({"dim": 4}, "default"),
    "mds_ensemble": ({"grad_batch_size": 16}, "default"),
    "odin": ({"grad_batch_size": 16}, "default"),
    "vmdls": ({}, "vmdls"),
    "iodin": ({"grad_batch_size": 16}, "default"),
    "adascale": ({"k1": 25, "k2": 12.5, "grad_batch_size": 16}, "default"),  # 5% / 1% of 8 units round to none
    "dropout": ({"T": 3}, "dropout"),
    # "ensemble": member checkpoints from the ``members`` fixture
}
SPLITS = (("id_train", 64), ("id_val", 24), ("id_test", 20), ("ood", 20))


@pytest.fixture(scope="module")
def setups():
    """Per network spec: (net, loaders, NetOutputs per split), built once for the module."""
    cache = {}

    def get(key):
        if key not in cache:
            torch.manual_seed(0)
            net = NETWORKS.build(NETWORK_SPECS[key]).eval()
            gen = torch.Generator().manual_seed(1)
            splits = {}
            for name, n in SPLITS:
                x = torch.randn(n, 1, 8, 8, generator=gen) + (2.0 if name == "ood" else 0.0)
                y = torch.arange(n) % 4 if name != "ood" else torch.full((n,), -1)
                splits[name] = (x, y)
            loaders = {k: (lambda k=k: image_loader(*splits[k], batch_size=16)) for k in splits}
            outputs = {k: extract_outputs(net, loaders[k](), "cpu") for k in splits}
            cache[key] = (net, loaders, outputs)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two member checkpoints of the default network (the ensemble's)."""
    from pp_helpers import save_members
    return save_members(tmp_path_factory.mktemp("ensemble_members"), seeds=(1, 2), **NETWORK_SPECS["default"])


@pytest.mark.parametrize("name", builtin_names(POSTPROCESSORS))
def test_registered_postprocessor_fits_and_scores(name, setups, request):
    overrides, net_key = OVERRIDES.get(name, ({}, "default"))
    if name == "ensemble":
        overrides = {"checkpoints": request.getfixturevalue("members")}
    net, loaders, outputs = setups(net_key)
    pp = POSTPROCESSORS.build({"name": name, **overrides})
    assert POSTPROCESSORS.describe(name), f"{name} has no docstring summary"
    from_images = bool(pp.needs_network or pp.uses_taps)
    if from_images:
        pp.attach_network(net, torch.device("cpu"), lambda split: loaders[split]())
    # splits a method fits on besides the ID ones (GrOOD's ood_val): the OOD samples stand in
    extra = {"split_outputs": {s: outputs["ood"] for s in pp.fit_splits}} if getattr(pp, "fit_splits", ()) else {}
    pp.fit(outputs["id_train"], val_outputs=outputs["id_val"], **extra)
    confs = {}
    for split in ("id_test", "ood"):
        conf = pp.score_loader(loaders[split]()) if from_images else pp.score(outputs[split])
        conf, preds, _ = split_result(conf)  # (conf, preds) from methods that predict their own way
        conf = np.asarray(conf)
        assert preds is None or np.asarray(preds).shape == conf.shape, (name, split)
        assert conf.shape == (len(outputs[split]),), (name, split, conf.shape)
        assert conf.dtype.kind == "f" and np.isfinite(conf).all(), (name, split)
        confs[split] = conf
    both = np.concatenate(list(confs.values()))
    assert np.ptp(both) > 0, f"{name} gives every sample the same confidence"
    preds = np.asarray(pp.predict(outputs["id_test"]))
    assert preds.shape == (len(outputs["id_test"]),) and preds.dtype.kind in "iu"


#: constructor arguments that bound memory or speed and do not change the scores (kept out of metrics.json)
NOT_HYPERPARAMETERS = {"grad_batch_size", "chunk", "batch_size"}
#: arguments without a default, given here so that the method can be built
REQUIRED = {"ensemble": {"checkpoints": ["member_0.pt", "member_1.pt"]}}


@pytest.mark.parametrize("name", builtin_names(POSTPROCESSORS))
def test_registered_postprocessor_records_its_constructor_arguments(name):
    """metrics.json and the leaderboard take ``hyperparameters()``: every named constructor argument must be
    in it with the value the method runs with (here its default; ``auto`` is recorded resolved)."""
    import inspect
    pp = POSTPROCESSORS.build({"name": name, **REQUIRED.get(name, {})})
    recorded = pp.hyperparameters()
    for param in inspect.signature(type(pp).__init__).parameters.values():
        if param.name == "self" or param.name in NOT_HYPERPARAMETERS or param.kind in (param.VAR_POSITIONAL,
                                                                                       param.VAR_KEYWORD):
            continue
        assert param.name in recorded, f"{name}: '{param.name}' is not recorded"
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        if param.default is param.empty:
            default = REQUIRED[name][param.name]
        if default == "auto":  # recorded as resolved (openmax: the Weibull backend it found)
            continue
        assert recorded[param.name] == default, (name, param.name, recorded[param.name], default)
