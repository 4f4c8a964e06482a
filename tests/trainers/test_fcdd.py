"""FCDD: receptive fields, kernel, upsampling, loss (hand-computed), online supervision, baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openood_ext.errors import ConfigError
from openood_ext.networks import NETWORKS
from openood_ext.networks.receptive import ReceptiveField, check_field_fits, gkern, receptive_upsample
from openood_ext.trainers import TRAINERS, Batch, TrainContext
from openood_ext.trainers.fcdd import anomaly_term, fcdd_loss, pseudo_huber


def hand_rf(layers, n):
    """Independent hand computation: (k, t, p) per conv/pool layer."""
    r, j, s = 1, 1, 0.0
    for k, t, p in layers:
        n = (n + 2 * p - k) // t + 1
        r, s, j = r + (k - 1) * j, s + ((k - 1) / 2 - p) * j, j * t
    return n, r, j, s


def test_receptive_fields_match_hand_computation():
    net28 = NETWORKS.build({"name": "fcdd_cnn28"})
    assert (net28.rf.n, net28.rf.r, net28.rf.j, net28.rf.s) == (7, 16, 4, 1.5)
    assert (net28.rf.n, net28.rf.r, net28.rf.j, net28.rf.s) == hand_rf([(5, 1, 2), (2, 2, 0), (5, 1, 2), (2, 2, 0), (1, 1, 0)], 28)
    net32 = NETWORKS.build({"name": "fcdd_cnn32"})
    assert (net32.rf.n, net32.rf.r, net32.rf.j, net32.rf.s) == (8, 22, 4, 1.5)
    assert net32(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 8, 8)
    vgg = NETWORKS.build({"name": "fcdd_vgg11_224", "pretrained": False, "freeze": True})
    c3, pool = (3, 1, 1), (2, 2, 0)
    assert (vgg.rf.n, vgg.rf.r, vgg.rf.j, vgg.rf.s) == (28, 62, 8, 3.5) == hand_rf(
        [c3, pool, c3, pool, c3, c3, pool, c3, c3, (1, 1, 0)], 224)
    frozen = [p.requires_grad for p in vgg.features[:15].parameters()]
    assert frozen and not any(frozen) and all(p.requires_grad for p in vgg.features[15:].parameters())


def test_receptive_field_larger_than_input_is_an_error():
    with pytest.raises(ConfigError, match="receptive field 16 px is larger than the input"):
        NETWORKS.build({"name": "fcdd_cnn28", "image_size": 12})
    with pytest.raises(ConfigError, match="larger than the input"):
        check_field_fits(ReceptiveField(n=2, r=40, j=4, s=1.5, img_size=32))


def test_gkern_unnormalised_even_and_odd():
    from scipy.signal.windows import gaussian
    k5 = gkern(5, 1.2).numpy()
    assert k5.max() == pytest.approx(1.0) and np.allclose(k5, np.outer(gaussian(5, 1.2), gaussian(5, 1.2)))
    k16 = gkern(16, 1.2).numpy()
    assert k16.shape == (16, 16) and k16.max() == pytest.approx(0.25)
    assert k16[7, 7] == k16[8, 8] == k16[7, 8] == pytest.approx(0.25)  # duplicated centre
    assert np.allclose(k16, k16.T) and np.allclose(k16, k16[::-1, ::-1])


@pytest.mark.parametrize("name,size,n,channels", [("fcdd_cnn28", 28, 7, 1), ("fcdd_cnn32", 32, 8, 3)])
def test_single_pixel_upsampling_is_centred_on_its_receptive_field(name, size, n, channels):
    net = NETWORKS.build({"name": name})
    rf = net.rf
    for i in (2, 3, n - 3):
        m = torch.zeros(1, 1, n, n)
        m[0, 0, i, i] = 1.0
        up = receptive_upsample(m, rf, 1.2)[0, 0]
        assert up.shape == (size, size)
        peak = (up == up.max()).nonzero().float()
        centre = rf.s + i * rf.j
        assert peak[:, 0].mean().item() == pytest.approx(centre) and peak[:, 1].mean().item() == pytest.approx(centre)
        assert up.max().item() == pytest.approx(0.25)  # even r: the unnormalised kernel's peak


def test_vgg_upsampling_geometry():
    rf = ReceptiveField(n=28, r=62, j=8, s=3.5, img_size=224)
    m = torch.zeros(2, 1, 28, 28)
    m[:, 0, 10, 12] = 1.0
    up = receptive_upsample(m, rf, 12.0)
    assert up.shape == (2, 1, 224, 224)
    peak = (up[0, 0] == up[0, 0].max()).nonzero().float().mean(0)
    assert peak.tolist() == pytest.approx([3.5 + 80, 3.5 + 96])


def test_loss_without_maps_hand_computed():
    a = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 1.0), torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])])
    labels = torch.tensor([0, 1, 1])
    expected = (0.5 - math.log(1 - math.exp(-1.0) + 1e-31) - math.log(1 - math.exp(-1.5) + 1e-31)) / 3
    assert fcdd_loss(a, labels).item() == pytest.approx(expected, rel=1e-6)
    # all normal: the mean of A
    assert fcdd_loss(a, torch.zeros(3, dtype=torch.long)).item() == pytest.approx(a.mean().item())
    # all anomalous: the intended formula, or mean(A) with the published quirk
    all_anom = sum(-math.log(1 - math.exp(-v)) for v in (0.5, 1.0, 1.5)) / 3
    assert fcdd_loss(a, torch.ones(3, dtype=torch.long)).item() == pytest.approx(all_anom, rel=1e-6)
    assert fcdd_loss(a, torch.ones(3, dtype=torch.long), single_label_quirk=True).item() == pytest.approx(a.mean().item())
    assert anomaly_term(torch.tensor(0.0)).item() == pytest.approx(-math.log(1e-31), rel=1e-5)
    assert pseudo_huber(torch.tensor([0.0, 3.0])).tolist() == pytest.approx([0.0, math.sqrt(10) - 1])


def test_loss_with_maps_hand_computed():
    up = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    y = torch.zeros(2, 1, 2, 2)
    y[1, 0, :, 1] = 1  # anomalous pixels of sample 1: the right column
    labels = torch.tensor([0, 1])
    norm0 = 10 / 4
    norm1, anom1 = (1 + 3) / 4, -math.log(1 - math.exp(-(2 + 4) / 4) + 1e-31)
    got = fcdd_loss(up, labels, y, upsample=lambda a: a)
    assert got.item() == pytest.approx((norm0 + norm1 + anom1) / 2, rel=1e-6)
    # through the real receptive-field upsampling: the same formula on the upsampled map
    net = NETWORKS.build({"name": "fcdd_cnn28"})
    a = torch.rand(2, 1, 7, 7)
    yy = torch.zeros(2, 1, 28, 28)
    yy[1, :, 5:15, 5:15] = 1
    big = net.upsample(a)
    ref = ((big[0] ).mean() + (big[1] * (1 - yy[1])).mean() - torch.log(1 - torch.exp(-(big[1] * yy[1]).mean()) + 1e-31)) / 2
    assert fcdd_loss(a, labels, yy, net.upsample).item() == pytest.approx(ref.item(), rel=1e-5)


def _ctx(seed=0, outliers=None):
    return TrainContext(device=torch.device("cpu"), num_classes=1, epochs=1, steps_per_epoch=1, seed=seed,
                        outliers=outliers)


def test_online_supervision_replaces_about_half_deterministically():
    trainer = TRAINERS.build({"name": "fcdd", "supervise_mode": "noise"})
    net = NETWORKS.build({"name": "fcdd_cnn28"})
    trainer.setup(net, _ctx())
    images, outliers = torch.zeros(200, 1, 28, 28), torch.ones(200, 1, 28, 28)
    batch = Batch(images, torch.zeros(200, dtype=torch.long), outliers, 0, 5, 0)
    x1, l1, gt = trainer.supervised_batch(batch)
    x2, l2, _ = trainer.supervised_batch(batch)
    assert torch.equal(l1, l2) and gt is None
    assert 70 < int(l1.sum()) < 130
    assert torch.equal(x1[:, 0, 0, 0], l1.float())  # replaced samples are the outliers, labelled 1
    terms = trainer.training_step(Batch(images[:8], torch.zeros(8, dtype=torch.long), outliers[:8], 0, 1, 0))
    assert terms["loss"].requires_grad and torch.isfinite(terms["loss"])


def test_malformed_normal_gt_uses_changed_pixels():
    class Src:
        last_changed = torch.zeros(4, 1, 28, 28)
    Src.last_changed[:, :, :5, :5] = 1
    trainer = TRAINERS.build({"name": "fcdd", "supervise_mode": "malformed_normal_gt", "p_outlier": 1.0})
    trainer.setup(NETWORKS.build({"name": "fcdd_cnn28"}), _ctx(outliers=Src()))
    x, labels, gt = trainer.supervised_batch(Batch(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long),
                                                   torch.ones(4, 1, 28, 28), 0, 0, 0))
    assert labels.tolist() == [1, 1, 1, 1] and gt.shape == (4, 1, 28, 28) and gt.sum().item() == 4 * 25


def test_trainer_argument_errors_and_unsupervised_needs_no_outliers():
    with pytest.raises(Exception, match="supervise_mode"):
        TRAINERS.build({"name": "fcdd", "supervise_mode": "bogus"})
    with pytest.raises(Exception, match="p_outlier"):
        TRAINERS.build({"name": "fcdd", "p_outlier": 1.5})
    assert TRAINERS.build({"name": "fcdd", "supervise_mode": "unsupervised"}).needs_outliers is None
    assert TRAINERS.build({"name": "fcdd", "supervise_mode": "other", "published_other_quirk": True}).needs_outliers is None
    with pytest.raises(ConfigError, match="not an FCDD network"):
        TRAINERS.build({"name": "fcdd"}).setup(NETWORKS.build({"name": "hsc_cnn28"}), _ctx())


def test_hsc_and_ae_scores_and_heatmaps():
    x = torch.rand(3, 1, 28, 28)
    hsc = TRAINERS.build({"name": "hsc", "supervise_mode": "unsupervised"})
    hsc.setup(NETWORKS.build({"name": "hsc_cnn28"}), _ctx())
    s, h = hsc.anomaly_scores(x)
    assert s.shape == (3,) and h.shape == (3, 28, 28) and (s >= 0).all() and (h >= 0).all()
    terms = hsc.training_step(Batch(x, torch.zeros(3, dtype=torch.long), None, 0, 0, 0))
    assert terms["loss"].requires_grad
    ae = TRAINERS.build({"name": "ae"})
    ae.setup(NETWORKS.build({"name": "ae_cnn28"}), _ctx())
    s, h = ae.anomaly_scores(x)
    assert s.shape == (3,) and h.shape == (3, 28, 28)
    fc = TRAINERS.build({"name": "fcdd"})
    fc.setup(NETWORKS.build({"name": "fcdd_cnn28"}), _ctx())
    s, h = fc.anomaly_scores(x)
    assert s.shape == (3,) and h.shape == (3, 28, 28) and (h >= 0).all()


@pytest.mark.parametrize("rf", [ReceptiveField(7, 16, 4, 1.5, 28), ReceptiveField(8, 22, 4, 1.5, 32),
                                ReceptiveField(28, 62, 8, 3.5, 224), ReceptiveField(7, 15, 4, 1.0, 28)])
def test_separable_upsampling_equals_fcdds_2d_transposed_convolution(rf):
    """The spec's formula, literally: conv_transpose2d with the 2-D kernel, output padding, int(s) crop."""
    import torch.nn.functional as F
    x = torch.rand(3, 1, rf.n, rf.n)
    k = gkern(rf.r, 1.2).view(1, 1, rf.r, rf.r)
    op = rf.img_size - (rf.n - 1) * rf.j - 1 - (1 if rf.r % 2 == 0 else 0)
    ref = F.conv_transpose2d(x, k, stride=rf.j, output_padding=op)
    pad, s = (rf.r - 1) // 2, int(rf.s)
    ref = ref[..., pad - s:-pad - s, pad - s:-pad - s]
    got = receptive_upsample(x, rf, 1.2)
    assert got.shape == ref.shape == (3, 1, rf.img_size, rf.img_size)
    assert torch.allclose(got, ref, atol=1e-6)


def test_local_contrast_normalisation():
    from openood_ext.networks.fcdd import local_contrast_normalization as lcn
    x = torch.rand(3, 1, 28, 28)
    y = lcn(x, "l1")
    assert torch.allclose(y.flatten(1).mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.flatten(1).abs().mean(1), torch.ones(3), atol=1e-5)
    assert torch.allclose(lcn(0.5 * x - 2, "l1"), y, atol=1e-4)  # invariant to the benchmark's normalisation
    assert torch.isfinite(lcn(torch.ones(1, 1, 4, 4))).all()
    with pytest.raises(ConfigError, match="network.lcn"):
        NETWORKS.build({"name": "fcdd_cnn28", "lcn": "l3"})


def test_outlier_positions_differ_between_torchrun_ranks(monkeypatch):
    """p_outlier's replacement mask: each rank its own (the same mask on every rank correlates the global
    batch); a single process keeps the documented (seed, step, tag) stream."""
    import numpy as np

    from openood_ext import distributed
    from openood_ext.trainers.fcdd import step_generator
    alone = torch.rand(64, generator=step_generator(3, 10, 0xFCDD))
    state = np.random.SeedSequence([3, 10, 0xFCDD]).generate_state(1, np.uint64)[0]
    assert torch.equal(alone, torch.rand(64, generator=torch.Generator().manual_seed(int(state) % 2**62)))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    masks = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        masks.append(torch.rand(64, generator=step_generator(3, 10, 0xFCDD)))
    assert not torch.equal(masks[0], masks[1])
