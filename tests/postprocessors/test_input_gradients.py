"""The shared gradient pass (postprocessors/input_gradients.py) and the scheduler's use of it: ODIN, iODIN
and AdaSCALE scored together run one clean forward pass per micro-batch (the scored split's shared pass
itself) and one backward per distinct gradient, and give exactly the scores each gives alone. Passes are
counted, not timed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import image_loader

from openood_ext.networks.small_cnn import DigitsCNN
from openood_ext.postprocessors import POSTPROCESSORS
from openood_ext.postprocessors.input_gradients import GradientBatch, run_gradient_pass
from openood_ext.postprocessors.schedule import LoaderSource, Scheduler

SPLITS = {"id_train": 40, "id_val": 20, "id_test": 30, "far": 18}
CHUNK = 8  # micro-batches of 8 in loader batches of 16: 4 + 3 micro-batches on id_test and far


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = DigitsCNN(num_classes=3, in_channels=1, width=2).eval()
    gen = torch.Generator().manual_seed(1)
    data = {k: (torch.randn(n, 1, 8, 8, generator=gen), torch.arange(n) % 3) for k, n in SPLITS.items()}
    loaders = {k: image_loader(*v) for k, v in data.items()}
    return net, loaders


class Counter:
    """Counts forward passes of a network (a hook on the module) and backward calls (torch.autograd.grad)."""

    def __init__(self, net, monkeypatch):
        self.forwards = self.backwards = 0
        net.register_forward_hook(self._forward)
        grad = torch.autograd.grad

        def counted(*args, **kwargs):
            self.backwards += 1
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", counted)

    def _forward(self, *_):
        self.forwards += 1


def build(**odin):
    args = {"grad_batch_size": CHUNK}
    return {"odin": POSTPROCESSORS.build({"name": "odin", **args, **odin}),
            "iodin": POSTPROCESSORS.build({"name": "iodin", **args}),
            "adascale": POSTPROCESSORS.build({"name": "adascale", "k1": 50, "k2": 25, **args})}


def scheduled(net, loaders, share: bool, pps):
    sched = Scheduler(pps, LoaderSource(net, loaders), net, "cpu", share_gradients=share)
    sched.prepare(["id_test", "far"])
    for label in pps:
        sched.score(label)
    return sched.result


#: plain passes of prepare: id_train and id_val (3 + 2 loader batches), then id_test and far (2 + 2),
#: which the gradient group's clean passes replace when it rides them
FIT_BATCHES, SCORED_BATCHES = 3 + 2, 2 + 2


def count_scoring(net, loaders, share: bool, monkeypatch, pps):
    """(forward passes, backward calls, scores) of preparing and scoring the two splits (the methods'
    fits done first and not counted)."""
    fresh = DigitsCNN(num_classes=3, in_channels=1, width=2).eval()
    fresh.load_state_dict(net.state_dict())
    fit_source = LoaderSource(fresh, loaders)
    for pp in pps.values():  # fit first, so that only the passes over the scored splits are counted
        pp.attach_network(fresh, "cpu", fit_source.loader_for)
        pp.fit(fit_source.outputs("id_train"), val_outputs=fit_source.outputs("id_val"))
        pp.fit = lambda *a, **k: None
    counter = Counter(fresh, monkeypatch)
    sched = Scheduler(pps, LoaderSource(fresh, loaders), fresh, "cpu", share_gradients=share)
    sched.prepare(["id_test", "far"])
    for label in pps:
        sched.score(label)
    monkeypatch.undo()
    return counter.forwards - FIT_BATCHES, counter.backwards, sched.result


def test_the_group_shares_clean_passes_and_equal_gradients(setup, monkeypatch):
    net, loaders = setup
    micro = 4 + 3  # micro-batches over id_test (30) and far (18), 8 samples each
    fwd_alone, bwd_alone, alone = count_scoring(net, loaders, False, monkeypatch, build())
    fwd_shared, bwd_shared, shared = count_scoring(net, loaders, True, monkeypatch, build())
    # alone: the plain passes, then per micro-batch each of the 3 methods runs a clean pass, a backward
    # and a perturbed pass
    assert (fwd_alone, bwd_alone) == (SCORED_BATCHES + 6 * micro, 3 * micro)
    # shared: the scored splits' pass is the one clean pass; ODIN and iODIN (same temperature) one
    # backward, AdaSCALE its own
    assert (fwd_shared, bwd_shared) == (4 * micro, 2 * micro)
    assert shared.shared_seconds == {} and list(shared.gradient_seconds) == ["id_test", "far"]
    assert list(alone.shared_seconds) == [] and alone.gradient_seconds == {}
    for label in ("odin", "iodin", "adascale"):
        for split in ("id_test", "far"):
            np.testing.assert_array_equal(shared.scores[label][split].conf, alone.scores[label][split].conf)


def test_other_temperatures_take_their_own_gradient_and_scores_match_score_loader(setup, monkeypatch):
    net, loaders = setup
    pps = build(temperature=10.0)
    _, bwd, shared = count_scoring(net, loaders, True, monkeypatch, pps)
    assert bwd == 3 * 7  # ODIN at T = 10 no longer shares iODIN's T = 1000 gradient
    for label, pp in pps.items():
        np.testing.assert_array_equal(shared.scores[label]["far"].conf, pp.score_loader(loaders["far"]))


def test_different_micro_batch_sizes_still_give_each_methods_own_scores(setup):
    net, loaders = setup
    pps = build()
    pps["adascale"] = POSTPROCESSORS.build({"name": "adascale", "k1": 50, "k2": 25, "grad_batch_size": 5})
    result = scheduled(net, loaders, True, pps)
    alone = scheduled(net, loaders, False, build() | {"adascale": POSTPROCESSORS.build(
        {"name": "adascale", "k1": 50, "k2": 25, "grad_batch_size": 5})})
    for label in pps:
        np.testing.assert_array_equal(result.scores[label]["id_test"].conf, alone.scores[label]["id_test"].conf)


def test_gradient_batch_memoises_by_key_and_pass_concatenates(setup):
    net, loaders = setup
    x = torch.randn(4, 1, 8, 8)
    batch = GradientBatch(net, x)
    loss = lambda b: b.logits.sum()  # noqa: E731
    first = batch.input_grad("sum", loss)
    assert batch.input_grad("sum", loss) is first and batch.backward_calls == 1
    other = batch.input_grad("max", lambda b: b.logits.max(dim=1).values.sum())
    assert batch.backward_calls == 2 and not torch.equal(first, other)
    from openood_ext.postprocessors.input_gradients import GradientScorer
    scorer = GradientScorer(lambda b: b.logits.detach().double()[:, 0], chunk=8)
    (conf,), seconds = run_gradient_pass(net, loaders["far"], "cpu", [scorer])
    with torch.no_grad():
        expected = net(torch.cat([b[0] for b in loaders["far"]])).double()[:, 0].numpy()
    np.testing.assert_allclose(conf, expected, rtol=1e-6)
    assert set(seconds) == {"scorers", "shared"}
    with pytest.raises(ValueError, match="micro-batch sizes differ"):
        run_gradient_pass(net, loaders["far"], "cpu", [scorer, GradientScorer(scorer.score, chunk=4)])


class CountingLoader:
    """An image loader that counts how often it is iterated in full or in part."""

    def __init__(self, loader):
        self.inner, self.dataset, self.iterations = loader, loader.dataset, 0

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        self.iterations += 1
        return iter(self.inner)


@pytest.mark.parametrize("budget_mib", [512, 0, 0.004])
def test_network_methods_after_the_first_replay_the_kept_batches(setup, budget_mib):
    """RankFeat and MDSEns (the gradient group rides prepare's shared pass): with the cache each split is
    read once; without it (or with a budget smaller than a split: 0.004 MiB < 30 8x8 images) once per
    method. Same scores."""
    net, loaders = setup
    counted = {k: CountingLoader(v) for k, v in loaders.items()}
    names = {"odin": {}, "iodin": {}, "rankfeat": {"layers": [0, 1]}, "mds_ensemble": {}}
    pps = {k: POSTPROCESSORS.build({"name": k, **a}) for k, a in names.items()}
    sched = Scheduler(pps, LoaderSource(net, counted), net, "cpu", batch_cache_mib=budget_mib)
    sched.prepare(["id_test", "far"])
    before = counted["far"].iterations
    for label in pps:
        sched.score(label)
    methods_reading = 2  # rankfeat, mds_ensemble
    assert counted["far"].iterations - before == (1 if budget_mib == 512 else methods_reading)
    plain = Scheduler({k: POSTPROCESSORS.build({"name": k, **a}) for k, a in names.items()},
                      LoaderSource(net, loaders), net, "cpu", batch_cache_mib=0).run(["id_test", "far"])
    for label in pps:
        np.testing.assert_array_equal(sched.result.scores[label]["far"].conf, plain.scores[label]["far"].conf)


def test_adascale_variants_share_the_perturbed_pass(setup, monkeypatch):
    """AdaSCALE-A and -L with the same perturbation: one clean pass, one backward and one perturbed pass
    per micro-batch for both (alone: two of each), and the scores each gives alone."""
    net, loaders = setup
    pps = lambda: {v: POSTPROCESSORS.build({"name": "adascale", "variant": v, "k1": 50, "k2": 25,  # noqa: E731
                                            "grad_batch_size": CHUNK}) for v in ("a", "l")}
    fwd_alone, bwd_alone, alone = count_scoring(net, loaders, False, monkeypatch, pps())
    fwd_shared, bwd_shared, shared = count_scoring(net, loaders, True, monkeypatch, pps())
    assert (fwd_alone, bwd_alone) == (SCORED_BATCHES + 4 * 7, 2 * 7) and (fwd_shared, bwd_shared) == (2 * 7, 7)
    for v in ("a", "l"):
        np.testing.assert_array_equal(shared.scores[v]["far"].conf, alone.scores[v]["far"].conf)


def test_the_group_rides_the_tapped_shared_pass_and_scores_as_alone(setup):
    """With a tap method, the scored splits' one shared pass carries the taps and the group's clean
    passes; every score is the one computed apart, the taps' and the group's own seconds are kept."""
    net, loaders = setup
    pps = lambda: build() | {"gram": POSTPROCESSORS.build({"name": "gram"})}  # noqa: E731
    ride = Scheduler(pps(), LoaderSource(net, loaders), net, "cpu").run(["id_test", "far"])
    apart = Scheduler(pps(), LoaderSource(net, loaders), net, "cpu", share_gradients=False).run(["id_test", "far"])
    assert set(ride.gradient_seconds) == {"id_test", "far"} and ride.shared_seconds == {}
    assert all(ride.tap_seconds[s] > 0 for s in ("id_train", "id_test", "far"))
    for split in ("id_test", "far"):
        for label in ("odin", "iodin", "adascale"):
            np.testing.assert_array_equal(ride.scores[label][split].conf, apart.scores[label][split].conf)
        # the pass ran in micro-batches of 8 instead of loader batches of 16: float rounding at most
        np.testing.assert_allclose(ride.scores["gram"][split].conf, apart.scores["gram"][split].conf, rtol=1e-5)


@pytest.mark.parametrize("shared_pass", ["bf16", "compiled"])
def test_a_shared_pass_of_another_network_keeps_the_group_on_passes_of_its_own(setup, shared_pass):
    """The group's passes run the fp32 network itself: under a bf16 shared pass, or one through a compiled
    wrapper (OutputStore's ``forward_net``), it does not ride it (same scores either way)."""
    net, loaders = setup
    source = LoaderSource(net, loaders)
    if shared_pass == "bf16":
        source.precision = "bf16"  # as a source configured with precision: bf16 reports it
    else:
        source.forward_net = torch.nn.Sequential(net)  # stands for the compiled wrapper of the network
    result = Scheduler(build(), source, net, "cpu").run(["id_test", "far"])
    assert result.gradient_seconds == {} and list(result.shared_seconds) == ["input gradients: odin, iodin, adascale"]
    ride = Scheduler(build(), LoaderSource(net, loaders), net, "cpu").run(["id_test", "far"])
    for label in ("odin", "iodin", "adascale"):
        np.testing.assert_array_equal(result.scores[label]["far"].conf, ride.scores[label]["far"].conf)
