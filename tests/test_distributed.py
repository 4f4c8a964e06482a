"""Data parallelism on the CPU with gloo: 2 processes started by torch.multiprocessing spawn.

* one training step with 2 ranks x batch B equals 1 process x batch 2B (parameters, loss terms), with
  an extra trainable module, a trainer that calls a network method other than forward, and ctx.gather;
* gather_rows with different row counts per rank; shards cover a split in order; run_on_main hands
  rank 0's result and its errors to the other rank;
* sharded batch samplers (VMDLS's class-balanced one), loader/precision/compile options, bad inputs.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from openood_ext import distributed
from openood_ext.errors import ConfigError
from openood_ext.trainers import Engine, Trainer, split_trainer_config
from openood_ext.trainers.vmdls_sampler import ClassBalancedBatchSampler
from openood_ext.utils.runtime import (
    autocast,
    check_compile,
    loader_options,
    prepare_module,
)


def join_group(rank: int, world: int, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OPENOOD_DIST_TIMEOUT_S": "60"})
    assert distributed.init_from_env(torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- one step
class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 4)
        self.fc = nn.Linear(4, 3)

    def embed(self, x):  # called by the trainer instead of forward: DDP must still see its parameters
        return torch.tanh(self.body(x))

    def forward(self, x):
        return self.fc(self.embed(x))


class EmbedAndHead(Trainer):
    """CE on the network plus an extra trainable head on its embedding; counts ctx.gather's rows."""

    def setup(self, net, ctx):
        super().setup(net, ctx)
        torch.manual_seed(1)
        self.head = ctx.add_module("head", nn.Linear(4, 3), lr=0.05)

    def training_step(self, batch):
        z = self.net.embed(batch.images)
        rows = self.ctx.gather(z.detach())
        loss = F.cross_entropy(self.net.fc(z), batch.labels) + 0.5 * F.cross_entropy(self.head(z), batch.labels)
        return {"loss": loss, "gathered_rows": float(len(rows))}


def one_step_data(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def train_one_step(batch_size: int, sampler=None):
    torch.manual_seed(0)
    net = TinyNet()
    x, y = one_step_data()
    data = list(zip(x, y))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler, shuffle=sampler is None)
    settings = split_trainer_config({"name": "x", "epochs": 1, "batch_size": batch_size,
                                     "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False,
                                                   "weight_decay": 5e-4},
                                     "scheduler": {"name": "constant"}})[0]
    trainer = EmbedAndHead()
    engine = Engine(trainer, net, loader, settings, device="cpu", num_classes=3)
    history = engine.fit()
    params = {f"net.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    params.update({f"head.{k}": v.detach().clone() for k, v in trainer.head.state_dict().items()})
    return params, history[-1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    join_group(rank, world, port)
    results = {}
    data = list(zip(*one_step_data()))
    params, record = train_one_step(8, distributed.train_sampler(data, seed=0))
    results["params"], results["record"] = params, record
    # gather_rows: rank r contributes r + 1 rows of value r
    results["gathered"] = distributed.gather_rows(torch.full((rank + 1, 2), float(rank)))
    # evaluation shards in order
    loader = torch.utils.data.DataLoader(list(range(7)), batch_size=2)
    shard = [int(v) for b in distributed.shard_loader(loader) for v in b]
    results["shards"] = distributed.all_gather_object(shard)
    # rank 0's result and errors reach every rank
    results["on_main"] = distributed.run_on_main(lambda: f"from rank {distributed.rank()}")
    try:
        distributed.run_on_main(lambda: (_ for _ in ()).throw(ConfigError("lock held by another run")))
    except ConfigError as exc:
        results["error"] = str(exc)
    try:
        distributed.shard_range(1, "id_test")
    except ConfigError as exc:
        results["too_many"] = str(exc)
    try:
        Engine(EmbedAndHead(), TinyNet(), [1], split_trainer_config({"name": "x", "sync_batchnorm": True})[0],
               num_classes=3)
    except ConfigError as exc:
        results["sync_bn"] = str(exc)
    torch.save(results, f"{out}.{rank}")
    distributed.shutdown()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "result")
    mp.start_processes(_ddp_worker, args=(2, distributed.free_port(), out), nprocs=2, start_method="spawn")
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(2)]


def test_two_ranks_batch_b_match_one_process_batch_2b_after_one_step(ddp_results):
    single, record = train_one_step(16)
    assert record["gathered_rows"] == 16.0
    for res in ddp_results:
        assert set(res["params"]) == set(single)
        for key, value in single.items():
            assert torch.allclose(res["params"][key], value, atol=1e-6), key
        assert res["record"]["loss"] == pytest.approx(record["loss"], abs=1e-6)
        assert res["record"]["gathered_rows"] == 16.0  # 8 rows per rank, gathered over both
    # the step changed the weights (the comparison is not between two untouched initialisations)
    torch.manual_seed(0)
    assert not torch.allclose(TinyNet().body.weight, single["net.body.weight"])


def test_gather_shards_and_rank0_decisions(ddp_results):
    for rank, res in enumerate(ddp_results):
        assert torch.equal(res["gathered"], torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
        assert res["shards"] == [[0, 1, 2], [3, 4, 5, 6]]
        assert res["on_main"] == "from rank 0"
        assert res["error"] == "lock held by another run"
        assert "id_test: 1 sample(s) for 2 processes" in res["too_many"] and "--nproc_per_node <= 1" in res["too_many"]
        assert "sync_batchnorm" in res["sync_bn"] and "CUDA" in res["sync_bn"]


# ---------------------------------------------------------------------------------------------- single process
def test_single_process_is_a_no_op():
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    t = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(t) is t
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=2)
    assert distributed.shard_loader(loader) is loader
    assert distributed.run_on_main(lambda: 3) == 3
    assert list(distributed.shard_range(5)) == [0, 1, 2, 3, 4]


def test_sharded_class_balanced_batches_cover_the_epoch():
    labels = torch.arange(40) % 4
    inner = ClassBalancedBatchSampler(labels, batch_classes=2, sample_count=3, seed=5)  # 6 batches
    inner.set_epoch(2)
    full = inner.batches(2)
    shards = [distributed.ShardedBatchSampler(ClassBalancedBatchSampler(labels, 2, 3, seed=5), r, 4) for r in range(4)]
    for s in shards:
        s.set_epoch(2)
    got = [list(s) for s in shards]
    assert all(len(s) == 2 == len(g) for s, g in zip(shards, got))  # ceil(6 / 4), padded
    dealt = [got[r][i] for i in range(2) for r in range(4)]
    assert dealt[:6] == full and dealt[6:] == full[:2]  # round-robin, padded by the first batches
    assert shards[1].state_dict() == {"epoch": 2, "seed": 5}


def test_loader_precision_and_compile_options():
    cpu = torch.device("cpu")
    assert loader_options({}, cpu) == {"num_workers": 0, "pin_memory": False}
    opts = loader_options({"num_workers": 2, "persistent_workers": True, "prefetch_factor": 4,
                           "pin_memory": True}, cpu)
    assert opts == {"num_workers": 2, "pin_memory": True, "persistent_workers": True, "prefetch_factor": 4}
    with pytest.raises(ConfigError, match="prefetch_factor"):
        loader_options({"num_workers": 1, "prefetch_factor": 0}, cpu)
    with pytest.raises(ConfigError, match="pin_memory"):
        loader_options({"pin_memory": "yes"}, cpu)
    with pytest.raises(ConfigError, match="precision: fp16 needs a CUDA device"):
        autocast("fp16", cpu)
    with autocast("bf16", cpu):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16
    assert check_compile("compile", False) is None and check_compile("compile", True) == "inductor"
    with pytest.raises(ConfigError, match="compile"):
        check_compile("compile", 3)
    conv = nn.Conv2d(3, 4, 3)
    compiled = prepare_module(conv, channels_last=True, compile_backend="eager")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(compiled(x), nn.functional.conv2d(x, conv.weight.contiguous(), conv.bias), atol=1e-6)


def test_engine_compile_and_channels_last_train_like_plain():
    """The same step through TrainingStep compiled (eager backend) and channels_last gives the same weights."""
    plain, _ = train_one_step(16)
    import openood_ext.trainers.engine as engine_module
    spec = {"name": "x", "epochs": 1, "batch_size": 16, "compile": "eager", "channels_last": True,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4},
            "scheduler": {"name": "constant"}}
    settings = split_trainer_config(spec)[0]
    assert settings.compile == "eager" and settings.channels_last
    torch.manual_seed(0)
    net = TinyNet()
    x, y = one_step_data()
    loader = torch.utils.data.DataLoader(list(zip(x, y)), batch_size=16)
    engine = Engine(EmbedAndHead(), net, loader, settings, device="cpu", num_classes=3)
    assert isinstance(getattr(engine.step, "_orig_mod", None), engine_module.TrainingStep)
    engine.fit()
    for k, v in net.state_dict().items():
        assert torch.allclose(v, plain[f"net.{k}"], atol=1e-6), k


@pytest.mark.parametrize("override, key", [("+trainer.precision=fp16", "trainer.precision"),
                                           ("+precision=fp16", "precision")])
def test_fp16_on_cpu_is_rejected_before_any_run_directory(tmp_path, override, key):
    from conftest import REPO
    from openood_ext.config import load_config
    from openood_ext.pipelines.validation import validate_run
    cfg = load_config([REPO / "configs" / "pipelines" / "train.yml"],
                      ["device=cpu", f"output_dir={tmp_path / 'results'}", override])
    with pytest.raises(ConfigError, match=rf"^{key}: fp16 needs a CUDA device"):
        validate_run(cfg)
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------- collectives' devices
def _served(backend: str) -> set[str]:
    """Device types a backend accepts tensors on, written out independently of the code under test."""
    if ":" in backend:
        return {pair.split(":")[0] for pair in backend.split(",")}
    return {"nccl": {"cuda"}, "gloo": {"cpu"}}[backend]


@pytest.fixture
def fake_cuda_group(monkeypatch):
    """init_from_env as on a 2-GPU torchrun job (CUDA calls mocked), then a 2-rank world whose tensor
    collectives reject tensors on a device the chosen backend does not serve, as nccl does."""
    chosen = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: chosen.setdefault("set_device", index))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: chosen.setdefault("backend", backend))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.init_from_env(torch.device("cuda", 1))
    backend, calls = chosen["backend"], []

    def check(tensor, op):
        if tensor.device.type not in _served(backend):
            raise RuntimeError(f"{backend}: {op} of a {tensor.device.type} tensor is not supported")
        calls.append((op, tensor.device.type))

    def all_reduce(tensor, *a, **kw):
        check(tensor, "all_reduce")
        tensor.mul_(2)  # two identical ranks

    def all_gather(outs, tensor, *a, **kw):
        check(tensor, "all_gather")
        for out in outs:
            check(out, "all_gather")
            out.copy_(tensor)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a: 1)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: backend)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    return chosen, calls


def test_cuda_ranks_reduce_cpu_tensors_through_the_group(fake_cuda_group):
    """The epoch's loss totals are a CPU tensor: a plain nccl group crashed on them at the first epoch's end."""
    from openood_ext.trainers.engine import TermMeter
    chosen, calls = fake_cuda_group
    assert chosen["set_device"] == 1 and "cpu" in _served(chosen["backend"])
    meter = TermMeter()
    meter.update({"loss": torch.tensor(1.5), "ce": 0.5}, 4)
    meter.reduce_over_ranks()
    assert meter.count == 8 and meter.means() == {"ce": 0.5, "loss": 1.5}
    x = torch.arange(4.0)
    assert distributed.all_reduce_mean_(x).tolist() == [0.0, 1.0, 2.0, 3.0]
    rows = distributed.gather_rows(torch.ones(3, 2))
    assert rows.shape == (6, 2) and rows.device.type == "cpu"
    assert {op for op, _ in calls} == {"all_reduce", "all_gather"}


def test_backend_strings_name_the_devices_they_serve():
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_device_types(distributed.backend_for(torch.device("cuda", 0))) == {"cpu", "cuda"}
    assert distributed.backend_device_types("nccl") == {"cuda"}
    assert distributed.backend_device_types("gloo") == {"cpu"}


def test_only_distributed_calls_torch_collectives():
    """Every tensor collective goes through distributed.py's device-checked helpers."""
    import pathlib
    import re
    root = pathlib.Path(distributed.__file__).parent
    pattern = re.compile(r"\b(?:dist|torch\.distributed)\.(all_reduce|all_gather|broadcast|reduce_scatter|"
                         r"all_to_all|reduce|gather|scatter)\b\s*\(")
    offenders = [f"{p.relative_to(root)}: {m.group(0)}" for p in root.rglob("*.py") if p.name != "distributed.py"
                 for m in pattern.finditer(p.read_text())]
    assert offenders == []
