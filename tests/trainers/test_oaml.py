"""OAML: loss terms on small tensors, token replacement, generation (resume, determinism, truncated
lists), the sources, the trainer through the engine (resume bit-identical), configs and bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import entropy

from openood_ext.errors import CheckpointError, ConfigError, DataError
from openood_ext.networks import NETWORKS
from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
from openood_ext.trainers import TRAINERS, Engine, EngineSettings
from openood_ext.trainers.oaml import distill_projection, kd_kl

GEN = dict(model="tiny-random", classes=["cat", "dog"], id_features="synthetic", K=5, select=4, candidates=20,
           keep=2, repeats=2, images_per_class=2, chunk=2, steps=2, size=16, save_size=16, seed=3)


# ------------------------------------------------------------------------------------------ losses
def test_kd_kl_is_teacher_to_student_batchmean():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    ref = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s, 1), F.softmax(t, 1))
    assert torch.allclose(kd_kl(s, t), ref, atol=1e-6)
    by_hand = np.mean([entropy(F.softmax(t, 1)[i].numpy(), F.softmax(s, 1)[i].numpy()) for i in range(5)])
    assert kd_kl(s, t).item() == pytest.approx(by_hand, rel=1e-5)           # KL(teacher || student)
    assert kd_kl(s, t).item() != pytest.approx(kd_kl(t, s).item(), rel=1e-3)  # direction matters
    assert kd_kl(s, s).item() == pytest.approx(0, abs=1e-6)
    T = 4.0
    ref_T = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(s / T, 1), F.softmax(t / T, 1)) * T * T
    assert torch.allclose(kd_kl(s, t, T), ref_T, atol=1e-6)


def test_feature_kd_softmaxes_over_channels_not_batch():
    f, h = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]), torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]])
    per_row = [entropy(F.softmax(h[i], 0).numpy(), F.softmax(f[i], 0).numpy()) for i in range(2)]
    assert kd_kl(f, h).item() == pytest.approx(sum(per_row) / 2, rel=1e-5)
    over_batch = [entropy(F.softmax(h[:, j], 0).numpy(), F.softmax(f[:, j], 0).numpy()) for j in range(3)]
    assert kd_kl(f, h).item() != pytest.approx(sum(over_batch) / 2, rel=1e-3)
    proj = distill_projection(6, 3)
    assert [type(m).__name__ for m in proj] == ["BatchNorm1d", "Linear", "ReLU", "BatchNorm1d"]
    assert proj(torch.randn(4, 6)).shape == (4, 3)


# ------------------------------------------------------------------------------------------ tiny SD
@pytest.fixture(scope="module")
def gen_root(tmp_path_factory):
    from openood_ext.synthesizers.sd_pipeline import SDConfig, ensure_generated
    root = tmp_path_factory.mktemp("sd") / "gen"
    ensure_generated(root, SDConfig(**GEN))
    return root


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from openood_ext.synthesizers.sd_pipeline import SDConfig, load_pipeline
    return load_pipeline(SDConfig(**GEN), tmp_path_factory.mktemp("tok"))


def test_token_replacement_changes_the_class_token_row_only(pipe):
    from openood_ext.synthesizers.sd_pipeline import class_token_id, encode_prompt, encode_with_replacement
    tid = class_token_id(pipe.tokenizer, "cat")
    ids = pipe.tokenizer("A high-quality image of the cat").input_ids
    assert tid in ids and pipe.tokenizer.decode([tid]).strip() == "cat"
    pos = ids.index(tid)
    weight = pipe.text_encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    plain = encode_prompt(pipe, "A high-quality image of the cat")
    same = encode_with_replacement(pipe, "cat", before[tid])
    assert torch.allclose(plain, same)
    out = encode_with_replacement(pipe, "cat", torch.randn(weight.shape[1]) * 3)
    assert torch.equal(weight.detach(), before)                          # restored
    assert torch.allclose(out[0, :pos], plain[0, :pos], atol=1e-6)      # causal: earlier tokens unchanged
    assert not torch.allclose(out[0, pos], plain[0, pos])                # the class token is replaced
    dog = encode_with_replacement(pipe, "dog", before[class_token_id(pipe.tokenizer, "dog")])
    assert not torch.allclose(dog, plain)


def test_published_layout_is_batches_of_one_random_class_and_one_shared_outlier(pipe):
    from openood_ext.synthesizers.sd_pipeline import (SDConfig, batch_condition, encode_prompt, expected_entries,
                                                       generation_chunks)
    pub = SDConfig(**{**GEN, "batches": 5, "chunk": 3})
    chunks = generation_chunks(pub)
    assert len(expected_entries(pub)) == 15 and [ks for _, _, ks in chunks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8],
                                                                                 [9, 10, 11], [12, 13, 14]]
    assert {c for c, _, _ in chunks} <= {0, 1} and generation_chunks(pub) == chunks   # seeded class draws
    per_class = SDConfig(**{**GEN, "images_per_class": 3, "chunk": 2})
    assert expected_entries(per_class) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    pool = torch.randn(2, 10, pipe.text_encoder.get_input_embeddings().weight.shape[1]) * 3
    cond, rows = batch_condition(pipe, pub, pool, 0, 3, torch.Generator().manual_seed(0))
    assert rows.tolist() == [rows[0].item()] * 3 and torch.equal(cond[0], cond[1]) and torch.equal(cond[0], cond[2])
    plain = encode_prompt(pipe, "A high-quality image of the cat")
    assert not torch.allclose(cond[:1], plain)
    cond, rows = batch_condition(pipe, per_class, pool, 0, 2, torch.Generator().manual_seed(0))
    assert rows[0] != rows[1] and not torch.allclose(cond[0], cond[1])                 # one outlier per image
    published_cifar = SDConfig(**{**GEN, "batches": 5, "chunk": 3, "replace_token": False})
    cond, _ = batch_condition(pipe, published_cifar, pool, 0, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(cond, plain.expand(3, -1, -1))                              # the plain prompt


def test_oaml_configs_published_student_and_latent_count():
    from openood_ext.config import load_config
    pub = load_config(["configs/experiments/oaml/train_oaml_cifar10_224.yml"])
    assert pub.network.name == "resnet18_224x224" and pub.benchmark.preprocessor.image_size == 224
    assert pub.benchmark.preprocessor.resize == 224 and pub.trainer.batch_size == 128
    o = pub.trainer.outliers
    assert o.batches * o.chunk == 150 and o.replace_token is True
    anchor = load_config(["configs/experiments/oaml/train_dream_anchor_cifar10.yml"]).trainer
    assert anchor.optimizer.nesterov is True and anchor.scheduler.interval == "step"
    assert anchor.scheduler.min_lr_ratio == pytest.approx(1e-6 / anchor.optimizer.lr)


def test_published_loop_length_and_anchor_model():
    """OAML's loop skips each epoch's last batch (390 steps of 128 on CIFAR-10's 50,000 images), which
    trainer.drop_last reproduces; Dream-OOD's anchor model is a CIFAR ResNet-34 with its own constants."""
    from openood_ext.config import load_config
    from openood_ext.networks import NETWORKS
    from openood_ext.trainers import TRAINERS
    pub = load_config(["configs/experiments/oaml/train_oaml_cifar10_224.yml"])
    assert pub.trainer.drop_last is True
    trainer = TRAINERS.build({"name": "oaml", "teacher": {"checkpoint": "t.pt"}, "drop_last": True})
    assert len(trainer.batch_sampler(torch.zeros(50_000), 128, 0)) == 390
    assert TRAINERS.build({"name": "oaml", "teacher": {"checkpoint": "t.pt"}}).batch_sampler(torch.zeros(9), 4, 0) is None
    anchor = load_config(["configs/experiments/oaml/train_dream_anchor_cifar10.yml"])
    assert anchor.network.backbone == "resnet34_32x32"
    assert list(anchor.benchmark.preprocessor.std) == pytest.approx([63.0 / 255, 62.1 / 255, 66.7 / 255])
    net = NETWORKS.build({"name": "resnet34_32x32", "num_classes": 10, "width": 4})
    logits, feat = net(torch.randn(2, 3, 32, 32), return_feature=True)
    assert logits.shape == (2, 10) and feat.shape == (2, 32) and len(net.body.layer3) == 6


def test_hub_id_offline_is_one_line_error(tmp_path):
    from openood_ext.synthesizers.sd_pipeline import SDConfig, load_pipeline
    with pytest.raises(ConfigError, match="not available offline.*local directory") as e:
        load_pipeline(SDConfig(model="nobody/no-such-sd-model"), tmp_path)
    assert "\n" not in str(e.value)


def test_pool_reuses_npos_and_is_rescaled_to_anchor_norm(gen_root):
    pool = torch.load(gen_root / "text_outliers.pt", weights_only=True)
    o, a = pool["outliers"], pool["anchors"]
    assert o.shape == (2, 2 * 4 * 2, a.shape[1])   # repeats * select * keep
    assert torch.allclose(o.norm(dim=-1), a.norm(dim=1)[:, None].expand(2, 16), rtol=1e-5)


def test_text_sampler_is_npos_sample_per_class_on_normalised_features_rescaled():
    from openood_ext.synthesizers.npos import NPOSParams, npos_sample
    from openood_ext.synthesizers.sd_pipeline import SDConfig, sample_text_outliers
    cfg = SDConfig(**{**GEN, "repeats": 2})
    g = torch.Generator().manual_seed(1)
    feats, anchors = torch.randn(2, 12, 6, generator=g) * 3, torch.rand(2, 6, generator=g)
    out = sample_text_outliers(feats, anchors, cfg, torch.Generator().manual_seed(5))
    unit = feats / feats.norm(dim=-1, keepdim=True)
    params, ref_g, ref = NPOSParams(K=5, select=4, pick=4, candidates=20, keep=2, sigma=0.07), torch.Generator().manual_seed(5), []
    for c in range(2):  # class after class, repeat after repeat, each call its own draws
        o = torch.cat([npos_sample(unit[c], params, generator=ref_g, backend="torch").outliers.reshape(-1, 6)
                       for _ in range(2)])
        ref.append(o / o.norm(dim=-1, keepdim=True) * anchors[c].norm())
    assert out.shape == (2, 16, 6) and torch.allclose(out, torch.stack(ref), atol=1e-6)


def test_text_sampler_draws_a_fresh_gaussian_per_class_and_repeat():
    from openood_ext.synthesizers.sd_pipeline import SDConfig, sample_text_outliers
    cfg = SDConfig(**{**GEN, "repeats": 2})
    f = torch.randn(1, 12, 6, generator=torch.Generator().manual_seed(2))
    out = sample_text_outliers(f.expand(2, -1, -1), torch.ones(2, 6), cfg, torch.Generator().manual_seed(0))
    rows = lambda x: sorted(map(tuple, x.round(decimals=5).tolist()))  # noqa: E731 -- order-free comparison
    # same features: a shared G would give the same set of outliers for both classes and both repeats
    assert rows(out[0]) != rows(out[1]) and rows(out[0, :8]) != rows(out[0, 8:])


def test_generation_resumes_only_missing_chunks_and_is_deterministic(gen_root, tmp_path):
    from openood_ext.synthesizers.sd_pipeline import SDConfig, ensure_generated, status
    cfg = SDConfig(**GEN)
    copy = tmp_path / "copy"
    shutil.copytree(gen_root, copy)
    lat = copy / "latents" / "001_dog" / "000001.npy"
    ref = np.load(lat)
    lat.unlink()
    lines = (copy / "images.txt").read_text().splitlines()
    (copy / "images.txt").write_text("\n".join(lines[:-2]) + "\n")       # truncated list
    ok, problems = status(copy, cfg)
    assert not ok and "missing or unlisted" in problems[0]
    src = SYNTHESIZERS.build({"name": "sd_text_outliers", "root": str(copy), "generate": False, **GEN})
    src.setup(SourceContext(None, torch.device("cpu"), 0, 4, 1))
    with pytest.raises(DataError, match="incomplete"):
        src.check()
    out = ensure_generated(copy, cfg)
    assert out["generated"] == 2                                           # one chunk of 2
    assert np.array_equal(np.load(lat), ref)                               # same seed, same latent
    assert status(copy, cfg)[0]
    with pytest.raises(DataError, match="other settings"):
        ensure_generated(copy, SDConfig(**{**GEN, "seed": 4}))


def test_sources_draw_batches_and_reject_small_pools(gen_root):
    ctx = SourceContext(None, torch.device("cpu"), 0, 4, 1)
    text = SYNTHESIZERS.build({"name": "sd_text_outliers", "root": str(gen_root), "generate": False, **GEN})
    text.setup(ctx)
    text.check()
    g = torch.Generator().manual_seed(0)
    assert text.draw_features(4, g).shape == (4, text.dim)
    lat = SYNTHESIZERS.build({"name": "sd_latent_outliers", "root": str(gen_root)})
    lat.setup(ctx)
    lat.check()
    assert lat.dim == 4 * 8 * 8 and len(lat.pool) == 4
    noised = SYNTHESIZERS.build({"name": "sd_latent_outliers", "root": str(gen_root), "mode": "forward_noised",
                                 "timestep": 999})
    noised.setup(ctx)
    noised.check()
    z = noised.draw_features(4, torch.Generator().manual_seed(0))
    assert z.std().item() == pytest.approx(1.0, abs=0.3)                  # mostly noise at t = 999
    small = SYNTHESIZERS.build({"name": "sd_latent_outliers", "root": str(gen_root)})
    small.setup(SourceContext(None, torch.device("cpu"), 0, 128, 1))
    with pytest.raises(ConfigError, match="fewer than the image batch"):
        small.check()
    with pytest.raises(ConfigError, match="mode"):
        SYNTHESIZERS.build({"name": "sd_latent_outliers", "mode": "noisy"})


# ------------------------------------------------------------------------------------------ trainer
def _teacher_ckpt(path, classes=2):
    net = NETWORKS.build({"name": "timm_vit", "num_classes": classes, "model": "vit_tiny_patch16_224",
                          "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2})
    torch.save({"vit." + k if not k.startswith("fc.") else k: v for k, v in
                {k.removeprefix("vit."): v for k, v in net.state_dict().items()}.items()}, path)
    return {"model": "vit_tiny_patch16_224", "img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 1,
            "num_heads": 2, "checkpoint": str(path)}


def _toy(n=8):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 3, 8, 8, generator=g) + y[:, None, None, None] * 0.5
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def _engine(gen_root, tmp_path, path, teacher, update="alternate"):
    torch.manual_seed(0)
    net = NETWORKS.build({"name": "digits_cnn", "num_classes": 2, "in_channels": 3, "width": 4})
    src = SYNTHESIZERS.build({"name": "sd_text_outliers", "root": str(gen_root), "generate": False, **GEN})
    src.setup(SourceContext(None, torch.device("cpu"), 0, 4, 2))
    src.check()
    trainer = TRAINERS.build({"name": "oaml", "teacher": teacher, "club_update": update, "club_hidden": 8,
                              "latent_mu_hidden": [16], "latent_logvar_hidden": [8]})
    settings = EngineSettings.from_config({"epochs": 2, "batch_size": 4,
                                           "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}})
    return Engine(trainer, net, _toy(), settings, num_classes=2, source=src, state_path=path)


def test_trainer_terms_lrs_and_frozen_teacher(gen_root, tmp_path):
    teacher = _teacher_ckpt(tmp_path / "t.bin")
    eng = _engine(gen_root, tmp_path, tmp_path / "x.pt", teacher)
    eng.fit()
    rec = eng.history[-1]
    for key in ("ce", "kd", "feat_kd", "club_text", "club_latent", "q_nll"):
        assert key in rec and np.isfinite(rec[key])
    mods = eng.ctx.modules if hasattr(eng, "ctx") else None
    if mods is not None:
        assert mods["club_text"].lr == 1e-4 and mods["club_latent"].lr == 1e-4
        assert not mods["teacher"].trainable
        assert not any(p.requires_grad for p in mods["teacher"].module.parameters())


def test_engine_resume_is_bit_identical(gen_root, tmp_path):
    teacher = _teacher_ckpt(tmp_path / "t.bin")
    full = _engine(gen_root, tmp_path, tmp_path / "a.pt", teacher, "joint")
    full.fit()
    first = _engine(gen_root, tmp_path, tmp_path / "b.pt", teacher, "joint")
    first.settings.epochs = 1
    first.fit()
    resumed = _engine(gen_root, tmp_path, tmp_path / "b.pt", teacher, "joint")
    resumed.fit(resume=True)
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k


def test_bad_trainer_input(tmp_path):
    with pytest.raises(ConfigError, match="teacher"):
        TRAINERS.build({"name": "oaml"})
    teacher = _teacher_ckpt(tmp_path / "t.bin", classes=3)
    with pytest.raises(ConfigError, match="club_update"):
        TRAINERS.build({"name": "oaml", "teacher": teacher, "club_update": "both"})
    from openood_ext.trainers.oaml import build_teacher
    with pytest.raises(CheckpointError, match="3 classes.*2"):
        build_teacher(teacher, 2)
    with pytest.raises(CheckpointError, match="hub id"):
        build_teacher({**teacher, "checkpoint": "someone/vit-cifar10"}, 3)


# ------------------------------------------------------------------------------------------ configs, script, bench
def test_config_has_the_papers_weights_and_sizes():
    from openood_ext.config import load_config, to_plain
    from openood_ext.trainers import validate_trainer_config
    t = load_config(["configs/experiments/oaml/train_oaml_cifar10.yml"]).trainer
    assert (t.w_kd, t.w_feat, t.w_text, t.w_latent, t.temperature) == (4.0, 8.0, 0.1, 0.2, 1.0)
    assert (t.batch_size, t.epochs, t.optimizer.lr, t.optimizer.weight_decay, t.optimizer.nesterov) == (128, 500, 0.01, 5e-4, True)
    assert (t.club_lr, t.club_hidden, list(t.latent_mu_hidden)) == (1e-4, 512, [8192, 4096, 256])
    o = t.outliers
    assert (o.K, o.select, o.candidates, o.keep, o.sigma, o.steps, o.guidance, o.size, o.save_size) == \
        (300, 50, 1500, 2, 0.07, 50, 7.5, 512, 256)
    validate_trainer_config(to_plain(t))


def _run_script(env_extra, tmp_path, timeout):
    import os
    import subprocess
    env = {**os.environ, **env_extra}
    return subprocess.run(["bash", "scripts/cifar10_train_oaml.sh"], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_script_stops_before_training_naming_missing_inputs(tmp_path):
    r = _run_script({"OPENOOD_EXT_DATA": str(tmp_path / "nodata"), "SD_MODEL": str(tmp_path / "nosd"),
                     "ID_FEATURES": str(tmp_path / "f.pt"), "TEACHER": str(tmp_path / "t.pt"),
                     "BASE": str(tmp_path / "b.pt"), "OUT_ROOT": str(tmp_path / "gen")}, tmp_path, 60)
    assert r.returncode == 2, r.stderr
    for what in ("CIFAR-10 data", "SD model", "ID features", "teacher", "base checkpoint"):
        assert what in r.stderr
    assert "nothing was trained" in r.stderr and "training" not in r.stdout


@pytest.mark.slow
def test_smoke_script_end_to_end(tmp_path):
    """SMOKE=1 on ~300 CIFAR-10 images (needs the prepared data under /work/main/data or OPENOOD_EXT_DATA)."""
    import os
    from pathlib import Path
    data = os.environ.get("OPENOOD_EXT_DATA", "/work/main/data")
    if not (Path(data) / "benchmark_imglist/cifar10/train_cifar10.txt").is_file():
        pytest.skip(f"CIFAR-10 not prepared under {data}")
    r = _run_script({"SMOKE": "1", "OPENOOD_EXT_DATA": data, "WORK": str(tmp_path / "smoke"), "SEED": "7"},
                    tmp_path, 1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "trainer 'oaml'" in r.stdout + r.stderr and "ebo" in r.stdout
    assert (tmp_path / "smoke" / "sd_tiny" / "images.txt").is_file()


def test_bench_oaml_runs_at_tiny_sizes(capsys):
    from openood_ext.bench.oaml import bench_step
    s = bench_step(width=4, batch=4, repeats=1, text_dim=16, latent_dim=32, latent_hidden=(8,))
    assert s["ratio"] > 0 and s["oaml_step_s"] > 0


def test_anchor_cosine_model_and_class_features(tmp_path):
    from openood_ext.pipelines.dream_features import class_features
    a = torch.randn(3, 6)
    torch.save({"anchors": a}, tmp_path / "a.pt")
    net = NETWORKS.build({"name": "anchor_cosine", "num_classes": 3, "anchors": str(tmp_path / "a.pt"),
                          "backbone": "digits_cnn", "width": 4, "in_channels": 1, "temperature": 0.1})
    logits, feat = net(torch.randn(5, 1, 8, 8), return_feature=True)
    ref = F.normalize(feat, dim=1) @ F.normalize(a, dim=1).T / 0.1
    assert feat.shape == (5, 6) and torch.allclose(logits, ref, atol=1e-5)
    assert logits.abs().max() <= 10 + 1e-4
    with pytest.raises(ConfigError, match="expected \\[2, D\\]"):
        NETWORKS.build({"name": "anchor_cosine", "num_classes": 2, "anchors": str(tmp_path / "a.pt"),
                        "backbone": "digits_cnn", "in_channels": 1})
    f, y = torch.arange(12.0)[:, None].repeat(1, 2), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 0, 1])
    out = class_features(f, y, 3, 3)
    assert out.shape == (3, 3, 2) and out[0, :, 0].tolist() == [0, 3, 6] and out[2, :, 0].tolist() == [2, 5, 8]


def test_dream_features_order_published_reads_the_shuffled_augmented_train_loader(monkeypatch):
    """``--order published`` (default): the first N per class in the seeded, shuffled training loader
    (training transform); ``list``: image-list order. The loader is what the benchmark gives for
    ``train=True`` / ``False``; here a fake benchmark records the call and yields labelled rows."""
    from openood_ext.pipelines import dream_features as df
    calls = []

    class Bench:
        num_classes = 2

        def split(self, name):
            return name

        def loader(self, split, batch_size, train=False, seed=0):
            calls.append((split, train, seed))
            order = torch.randperm(6, generator=torch.Generator().manual_seed(seed)) if train else torch.arange(6)
            x = order.float()[:, None].repeat(1, 3)
            return [(x, order % 2)]

    monkeypatch.setattr(df, "build_benchmark", lambda cfg: Bench())
    monkeypatch.setattr(df, "build_network", lambda cfg, device: torch.nn.Identity())
    monkeypatch.setattr(df, "load_checkpoint", lambda path, net: None)
    monkeypatch.setattr(df, "extract_outputs", lambda net, loader, device, desc: type(
        "O", (), {"features": torch.cat([b[0] for b in loader]), "labels": torch.cat([b[1] for b in loader])})())
    cfg = {"batch_size": 4, "seed": 3}
    pub = df.extract_features(cfg, "ckpt", 2)
    listed = df.extract_features(cfg, "ckpt", 2, order="list")
    assert calls == [("id_train", True, 3), ("id_train", False, 3)]
    order = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    assert pub[0, :, 0].tolist() == [float(i) for i in order if i % 2 == 0][:2]
    assert listed[0, :, 0].tolist() == [0.0, 2.0] and listed[1, :, 0].tolist() == [1.0, 3.0]
    with pytest.raises(DataError, match="--order"):
        df.extract_features(cfg, "ckpt", 2, order="random")


def test_outlier_draws_differ_between_torchrun_ranks(monkeypatch):
    """Each rank draws its own text/latent rows at a step (the same rows on every rank would make a
    global step hold N copies of one outlier batch); rank 0 keeps the single-process stream."""
    from types import SimpleNamespace

    from openood_ext import distributed
    from openood_ext.trainers.oaml import OAMLTrainer

    pool = SimpleNamespace(draw_features=lambda n, g: torch.randperm(1000, generator=g)[:n].float())
    trainer = SimpleNamespace(ctx=SimpleNamespace(seed=3, device=torch.device("cpu")))
    draws = {}
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        draws[rank] = OAMLTrainer._draw(trainer, pool, 8, step=5, salt=0)
    assert not torch.equal(draws[0], draws[1])
    g = torch.Generator().manual_seed((3 * 1_000_003 + 5 * 2) % (2 ** 63))
    assert torch.equal(draws[0], torch.randperm(1000, generator=g)[:8].float())
