"""The training engine: trainer contract, accumulation, schedules, resume with extra modules and queues,
bad inputs. Engine-level tests run on small in-memory tensors; pipeline tests on the digits benchmark."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import PLUGIN_SRC, REPO, install_demo_plugin
from openood_ext import cli as cli_module
from openood_ext.config import load_config
from openood_ext.errors import ConfigError
from openood_ext.runner import run_config
from openood_ext.trainers import TRAINERS, Engine, Trainer, TrainingError, split_trainer_config
from openood_ext.trainers.optim import build_scheduler, check_schedule_spec, schedule_factor

TRAIN_CONFIG = REPO / "configs" / "pipelines" / "train.yml"


# ---------------------------------------------------------------------------------------------- helpers
def tensor_loader(n=32, batch_size=8, dim=5, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.DataLoader(list(zip(x, y)), batch_size=batch_size, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def settings(**kw):
    spec = {"name": "x", "epochs": 3, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9,
                                                                    "nesterov": False, "weight_decay": 0.0},
            "scheduler": {"name": "constant"}, **kw}
    return split_trainer_config(spec)[0]


class PlainCE(Trainer):
    def training_step(self, batch):
        return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}


class QueueState:
    """A FIFO queue of features, kept through ctx.register_state."""

    def __init__(self, size, dim):
        self.buf = torch.zeros(size, dim)
        self.filled = 0

    def push(self, x):
        self.buf = torch.cat([self.buf, x.detach().cpu()])[-len(self.buf):]
        self.filled = min(len(self.buf), self.filled + len(x))

    def state_dict(self):
        return {"buf": self.buf.clone(), "filled": self.filled}

    def load_state_dict(self, state):
        self.buf, self.filled = state["buf"].clone(), state["filled"]


class HeadAndQueue(Trainer):
    """A trainer with an extra trainable head (own lr), a frozen teacher, a queue and random draws."""

    def setup(self, net, ctx):
        super().setup(net, ctx)
        self.head = ctx.add_module("head", nn.Linear(3, 2), lr=0.01)
        self.teacher = ctx.add_module("teacher", nn.Linear(5, 3), trainable=False)
        self.queue = ctx.register_state("queue", QueueState(12, 3))

    def training_step(self, batch):
        logits = self.net(batch.images)
        self.queue.push(logits)
        noise = torch.randn_like(logits) * 0.01  # consumes the global RNG: resume must restore it
        aux = self.head(logits + noise).pow(2).mean() + 0.0 * self.queue.buf.sum()
        distil = F.mse_loss(logits, self.teacher(batch.images))
        return {"loss": F.cross_entropy(logits, batch.labels) + 0.1 * aux + 0.1 * distil, "aux": aux}


# ---------------------------------------------------------------------------------------------- contract
def test_trainer_in_test_file_runs_through_engine_and_records_terms():
    torch.manual_seed(0)
    net = nn.Linear(5, 3)
    engine = Engine(HeadAndQueue(), net, tensor_loader(), settings(), num_classes=3)
    history = engine.fit()
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert {"loss", "aux", "lr", "time_s", "images_per_s"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"]
    groups = engine.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.1, 0.01]  # the head has its own group; the teacher none
    assert not any(p.requires_grad for p in engine.ctx.modules["teacher"].module.parameters())


def test_duck_typed_trainer_without_base_class():
    class Duck:
        def training_step(self, batch):
            return {"loss": F.cross_entropy(self.net(batch.images), batch.labels)}

    from openood_ext.trainers import as_trainer
    history = Engine(as_trainer(Duck()), nn.Linear(5, 3), tensor_loader(), settings(epochs=1), num_classes=3).fit()
    assert len(history) == 1
    with pytest.raises(ConfigError, match="no training_step"):
        as_trainer(object())


def test_resume_with_extra_module_and_queue_is_bit_identical(tmp_path):
    def run(epochs, state_path, resume=False):
        torch.manual_seed(1)
        net = nn.Linear(5, 3)
        engine = Engine(HeadAndQueue(), net, tensor_loader(), settings(epochs=epochs), num_classes=3,
                        state_path=state_path)
        engine.fit(resume=resume)
        return engine

    straight = run(4, tmp_path / "a.pt")
    run(2, tmp_path / "b.pt")  # "interrupted" after 2 epochs: its state is on disk
    resumed = run(4, tmp_path / "b.pt", resume=True)
    assert resumed.start_epoch == 2
    for a, b in zip(straight.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ctx.modules["head"].module.state_dict().values(),
                    resumed.ctx.modules["head"].module.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(straight.trainer.queue.buf, resumed.trainer.queue.buf)
    assert [r["loss"] for r in straight.history] == [r["loss"] for r in resumed.history]


def test_accumulation_equals_one_larger_batch():
    """N accumulated batches of size B give the update of one batch of N*B (no batch norm, plain SGD)."""
    x, y = torch.randn(16, 5, generator=torch.Generator().manual_seed(3)), torch.arange(16) % 3
    data = list(zip(x, y))

    def one_epoch(batch_size, accumulate):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
        s = settings(epochs=1, accumulate=accumulate, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.0,
                                                                  "nesterov": False, "weight_decay": 0.0})
        Engine(PlainCE(), net, loader, s, num_classes=3).fit()
        return net

    big, accumulated = one_epoch(16, 1), one_epoch(4, 4)
    for a, b in zip(big.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    uneven = one_epoch(4, 3)  # groups of 3 + 1 batches: two steps, each the mean of its own group
    assert not torch.allclose(next(big.parameters()), next(uneven.parameters()))


@pytest.mark.parametrize("spec, expected", [
    ({"name": "cosine", "interval": "step", "min_lr_ratio": 0.0},
     lambda t, T, spe: 0.5 * (1 + math.cos(math.pi * t / T))),
    ({"name": "multistep", "milestones": [2, 4], "gamma": 0.1},
     lambda t, T, spe: 0.1 ** ((t >= 2) + (t >= 4))),
    ({"name": "exponential", "gamma": 0.98}, lambda t, T, spe: 0.98 ** t),
    ({"name": "cosine", "interval": "step", "min_lr_ratio": 0.0, "warmup_epochs": 1},
     lambda t, T, spe: 0.5 * (1 + math.cos(math.pi * t / T)) * min(1.0, (t + 1) / spe)),
    ({"name": "exponential", "gamma": 0.5, "interval": "step"}, lambda t, T, spe: 0.5 ** (t / spe)),
])
def test_schedules_follow_their_formula(spec, expected):
    epochs, steps_per_epoch = 6, 5
    spec = check_schedule_spec(spec, epochs)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, spec, epochs, steps_per_epoch)
    per_step = spec["interval"] == "step"
    total = epochs * steps_per_epoch if per_step else epochs
    for t in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * expected(t, total, steps_per_epoch)), (spec, t)
        assert schedule_factor(spec, t, epochs, steps_per_epoch) == pytest.approx(expected(t, total, steps_per_epoch))
        opt.step()
        sched.step()


def test_first_warmup_step_has_a_positive_learning_rate():
    spec = check_schedule_spec({"name": "cosine", "warmup_epochs": 2}, 10)
    assert 0 < schedule_factor(spec, 0, 10, 100) < 0.01


# ---------------------------------------------------------------------------------------------- failures
def test_missing_and_non_finite_loss_stop_with_epoch_step_and_term(tmp_path):
    class NoLoss(Trainer):
        def training_step(self, batch):
            return {"ce": torch.tensor(1.0)}

    with pytest.raises(TrainingError, match=r"returned no 'loss' at epoch 1, batch 1 \(got \['ce'\]\)"):
        Engine(NoLoss(), nn.Linear(5, 3), tensor_loader(), settings(), num_classes=3).fit()

    class Explodes(PlainCE):
        def training_step(self, batch):
            terms = super().training_step(batch)
            if batch.epoch == 1 and batch.index == 2:
                terms["penalty"] = torch.tensor(float("inf"))
                terms["loss"] = terms["loss"] + terms["penalty"]
            return terms

    state = tmp_path / "last.pt"
    with pytest.raises(TrainingError, match=r"epoch 2, batch 3: loss term 'penalty' is inf; the last good "
                                            r"training state \(after epoch 1\)"):
        Engine(Explodes(), nn.Linear(5, 3), tensor_loader(), settings(), num_classes=3, state_path=state).fit()
    assert torch.load(state, weights_only=False)["epoch"] == 1


@pytest.mark.parametrize("override, fragment", [
    ({"epochs": 0}, "trainer.epochs: expected int >= 1, got 0"),
    ({"epochs": -3}, "trainer.epochs: expected int >= 1, got -3"),
    ({"batch_size": 0}, "trainer.batch_size: expected int >= 1, got 0"),
    ({"epochs": 2.5}, "trainer.epochs: expected int, got 2.5"),
    ({"accumulate": True}, "trainer.accumulate: expected int, got True"),
    ({"optimizer": {"name": "lion"}}, "trainer.optimizer.name: unknown optimizer 'lion'"),
    ({"optimizer": {"name": "adam", "momentum": 0.9}}, "adam does not take 'momentum'"),
    ({"scheduler": {"name": "warmcos"}}, "trainer.scheduler.name: unknown scheduler 'warmcos'"),
    ({"scheduler": {"name": "multistep"}}, "multistep needs milestones"),
    ({"precision": "fp8"}, "trainer.precision: expected one of 'fp32', 'bf16', 'fp16'"),
    ({"grad_clip": -1}, "trainer.grad_clip: expected float > 0"),
])
def test_engine_settings_reject_bad_values(override, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        split_trainer_config({"name": "base", **override})
    assert fragment in str(info.value)


def test_fp16_on_cpu_is_a_config_error():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Engine(PlainCE(), nn.Linear(5, 3), tensor_loader(), settings(precision="fp16"), num_classes=3)


def test_bf16_autocast_runs_on_cpu():
    history = Engine(PlainCE(), nn.Linear(5, 3), tensor_loader(), settings(epochs=1, precision="bf16"),
                     num_classes=3).fit()
    assert math.isfinite(history[0]["loss"])


# ---------------------------------------------------------------------------------------------- pipeline
@pytest.fixture
def digits_env(digits_run, tmp_path, monkeypatch):
    work, _ = digits_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(work / "data"))
    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    return tmp_path


def train_cfg(tmp_path, name, *overrides):
    return load_config([TRAIN_CONFIG], ["trainer.epochs=2", f"output_dir={tmp_path / 'results'}", f"experiment={name}",
                                        f"network.checkpoint={tmp_path / name}.pt", *overrides])


@TRAINERS.register("test_engine_squared_hinge", force=True)
class SquaredHinge(Trainer):
    """A trainer written in the test file: multi-class squared hinge."""

    def __init__(self, margin: float = 1.0):
        self.margin = margin

    def training_step(self, batch):
        logits = self.net(batch.images)
        true = logits.gather(1, batch.labels[:, None])
        hinge = F.relu(self.margin + logits - true).pow(2).mean()
        return {"loss": hinge, "margin_violations": (logits > true).float().mean()}


def test_pipeline_runs_trainer_from_test_file_and_writes_history(digits_env):
    out = run_config(train_cfg(digits_env, "hinge", "trainer={name: test_engine_squared_hinge, epochs: 2, "
                                                    "batch_size: 64, margin: 0.5}"))
    run_dir = digits_env / "results" / "hinge"
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and "margin_violations" in history[0]
    assert (run_dir / "plots" / "loss_curves.png").stat().st_size > 1000
    meta = torch.load(out["checkpoint"], weights_only=False)["meta"]
    assert meta["trainer"] == "test_engine_squared_hinge"


def test_trainer_from_plugins_key_and_from_entry_point(digits_env, monkeypatch):
    cfg = train_cfg(digits_env, "plug", "plugins=[openood_ext_demo_plugin.trainers]")
    # plugins: imports the module; the class is registered here under a name of the test's choosing
    import openood_ext_demo_plugin.trainers as mod
    TRAINERS.register("demo_smooth_ce_by_plugin", force=True)(mod.DemoSmoothCE)
    cfg.trainer.name = "demo_smooth_ce_by_plugin"
    run_config(cfg)
    assert (digits_env / "results" / "plug" / "history.json").is_file()

    install_demo_plugin(digits_env / "site")
    monkeypatch.syspath_prepend(str(digits_env / "site"))
    importlib.invalidate_caches()
    monkeypatch.setattr(TRAINERS, "_entry_points_loaded", False)
    assert "demo_smooth_ce" in TRAINERS
    trainer = TRAINERS.build({"name": "demo_smooth_ce", "smoothing": 0.2})
    assert trainer.smoothing == 0.2


def run_cli(capsys, *args):
    code = cli_module.main(["run", *args])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("openood-ext: error:")], err


@pytest.mark.parametrize("override, fragment", [
    ("trainer.name=no_such_trainer", "unknown trainers name 'no_such_trainer'"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.batch_size=-1", "trainer.batch_size"),
    ("trainer.optimizer.name=rmsprop", "unknown optimizer 'rmsprop'"),
    ("trainer.scheduler.name=onecycle", "unknown scheduler 'onecycle'"),
    ("+trainer.outliers={name: oe_images}", "trainer 'base' does not use outliers"),
])
def test_bad_trainer_config_is_one_line_and_creates_nothing(digits_env, capsys, override, fragment):
    code, errors, err = run_cli(capsys, "--config", str(TRAIN_CONFIG), "output_dir=results", "experiment=bad",
                                f"network.checkpoint={digits_env / 'x.pt'}", override)
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert fragment in errors[0], errors[0]
    assert not (digits_env / "results").exists() or not any((digits_env / "results").iterdir())
    assert not (digits_env / "x.pt").exists()


@pytest.mark.parametrize("override, fragment", [
    ("+trainer.outliers={name: oe_images, limit: 301}", "trainer.outliers.limit: 301 is larger than the outlier set (300 images"),
    ("+trainer.outliers={name: oe_images, imglist: nowhere/list.txt}", "outlier-exposure set (image list nowhere/list.txt) is absent"),
    ("+trainer.outliers={name: oe_images, limit: 0}", "trainer.outliers.limit: 0 leaves no outlier images"),
    ("+trainer.outliers={name: fourier_filter, magnitude: 5}", "magnitude: 5 is larger than half the 8x8 image (4)"),
])
def test_bad_outlier_sources_stop_before_training(digits_env, capsys, override, fragment):
    code, errors, err = run_cli(capsys, "--config", str(TRAIN_CONFIG), "output_dir=results", "experiment=bad",
                                "trainer.name=oe", f"network.checkpoint={digits_env / 'x.pt'}", override)
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert fragment in errors[0], errors[0]
    assert not (digits_env / "results").exists() or not any((digits_env / "results").iterdir())


def test_absent_benchmark_oe_set_names_it(digits_env, capsys, tmp_path):
    code, errors, err = run_cli(capsys, "--config", str(TRAIN_CONFIG), "output_dir=results", "experiment=bad",
                                "trainer.name=oe", "benchmark.oe=train_tin597.txt", f"network.checkpoint={tmp_path / 'x.pt'}")
    assert code == 2 and len(errors) == 1, err
    assert "outlier-exposure set (benchmark split 'oe') is absent" in errors[0]
    assert "trainer.outliers=" in errors[0]


def test_oe_run_with_rgb_folder_outliers_on_grayscale_benchmark(digits_env, tmp_path):
    """Outlier images with another channel count are converted like ID images, not rejected."""
    from PIL import Image
    folder = tmp_path / "rgb_outliers"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (12, 10), (40 * i, 200 - 30 * i, 90)).save(folder / f"{i}.png")
    run_config(train_cfg(tmp_path, "rgb", "trainer.name=oe", f"+trainer.outliers={{name: oe_images, folder: {folder}}}"))
    history = json.loads((tmp_path / "results" / "rgb" / "history.json").read_text())
    assert {"ce", "oe"} <= set(history[0])
