"""Data parallelism through ``torch.distributed``, launched by ``torchrun`` (one process per device).

    torchrun --nproc_per_node 2 main.py --config configs/pipelines/test_ood.yml

Everything here is a no-op in a plain single process (no ``WORLD_SIZE`` > 1 in the environment), so a
single-process run is bit-identical to one without this module. Under torchrun:

* :func:`init_from_env` joins the process group from torchrun's ``RANK`` / ``WORLD_SIZE`` /
  ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` (backend ``cpu:gloo,cuda:nccl`` on CUDA: nccl for
  CUDA tensors, gloo for the CPU ones such as loss totals and pickled objects; ``gloo`` on CPU) with a
  timeout (``OPENOOD_DIST_TIMEOUT_S``, default 1800 s), so a collective whose peer is gone fails instead
  of hanging forever;
* rank 0 (:func:`is_main`) is the only process that logs to the console and writes files;
  :func:`run_on_main` runs a step there and hands its result or error to every rank;
* tensor collectives go through :func:`all_reduce_sum_`, :func:`all_reduce_mean_` and :func:`gather_rows`,
  which put the tensor on a device the group's backend serves (:func:`collective_device`) and hand the
  result back on the caller's device; no other module calls ``torch.distributed`` collectives directly;
* evaluation: :func:`shard_range` gives each rank one contiguous block of a split and
  :func:`gather_rows` concatenates the blocks back in the original order (variable sizes allowed);
* training: :func:`train_sampler` is a ``DistributedSampler`` seeded by (seed, epoch) and
  :class:`ShardedBatchSampler` deals a custom batch sampler's batches (e.g. VMDLS's class-balanced ones)
  round-robin over the ranks, padded so every rank takes the same number of steps.

A lost peer (a killed rank) surfaces as :class:`PeerLost`, an interruption: the run directory says
``interrupted`` and ``openood-ext run --resume DIR`` under the same torchrun command continues.
"""

from __future__ import annotations

import datetime
import math
import os
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from .errors import ConfigError, OpenOODError
from .utils.interrupts import RunInterrupted

DEFAULT_TIMEOUT_S = 1800.0
# nccl reduces CUDA tensors only; the CPU half (gloo) serves loss totals, counts and pickled objects
CUDA_BACKEND = "cpu:gloo,cuda:nccl"


class PeerLost(RunInterrupted):
    """Another process of the torchrun job stopped (or a collective timed out); this one stops too."""

    def __init__(self, what: str):
        BaseException.__init__(self, f"rank {rank()}: {what}")
        self.signum = 0


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise ConfigError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None
    return read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now, for a single-node rendezvous (tests, benches)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def timeout_s() -> float:
    value = os.environ.get("OPENOOD_DIST_TIMEOUT_S", "")
    try:
        t = float(value) if value.strip() else DEFAULT_TIMEOUT_S
    except ValueError:
        t = -1.0
    if not t > 0:
        raise ConfigError(f"environment variable OPENOOD_DIST_TIMEOUT_S={value!r}: expected seconds > 0")
    return t


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group (once); True when this process is one of several.

    ``device`` decides the backend (:func:`backend_for`): ``cpu:gloo,cuda:nccl`` for CUDA (each rank on
    ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    if is_distributed():
        return True
    _, world, local = env_world()
    if world <= 1:
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = backend_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return True


def backend_for(device: torch.device) -> str:
    """The process-group backend for ranks computing on ``device``: a plain ``nccl`` group would reject
    every CPU tensor (an epoch's loss totals, a gathered count), so CUDA runs pair it with gloo."""
    return CUDA_BACKEND if torch.device(device).type == "cuda" else "gloo"


def backend_device_types(backend: str) -> set[str]:
    """Device types whose tensors a backend string reduces: ``nccl`` -> {cuda}, ``gloo`` -> {cpu},
    ``cpu:gloo,cuda:nccl`` -> {cpu, cuda}."""
    backend = str(backend).lower()
    if ":" in backend:
        return {pair.split(":")[0].strip() for pair in backend.split(",") if ":" in pair}
    return {"nccl": {"cuda"}, "gloo": {"cpu"}, "mpi": {"cpu", "cuda"}}.get(backend, {"cpu"})


def collective_device(tensor: torch.Tensor) -> torch.device:
    """Where ``tensor`` must be for a collective of the current group: its own device when the backend
    serves that device type, else this rank's GPU (a nccl-only group) or the CPU (gloo)."""
    served = backend_device_types(dist.get_backend())
    if tensor.device.type in served:
        return tensor.device
    if "cpu" in served:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def shutdown() -> None:
    """Leave the process group (at the end of a run); safe to call when none exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because a peer is gone or timed out."""
    dist_error = getattr(dist, "DistError", ())
    if dist_error and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        k in text for k in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe"))


def guard(what: str):
    """Context manager turning a collective's peer failure into :class:`PeerLost` naming ``what``."""
    import contextlib

    @contextlib.contextmanager
    def _guard():
        try:
            yield
        except (RuntimeError, OSError) as exc:
            if is_distributed() and is_peer_failure(exc):
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                first = first.split(". ")[0][:200]
                raise PeerLost(f"{what}: another process of the torchrun job stopped or timed out ({first})") from None
            raise
    return _guard()


# ---------------------------------------------------------------------------------------------- collectives
def barrier() -> None:
    if is_distributed():
        with guard("waiting for the other processes"):
            dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a decision only rank 0 may take)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    with guard("broadcast"):
        dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    with guard("all_gather"):
        dist.all_gather_object(out, obj)
    return out


def run_on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and return its result on every rank; an exception there is raised on
    every rank (the same OpenOODError type and message when it is one), so no rank waits for nothing."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below after telling the others
            error = exc
    sent = (None, None)
    if is_main():
        try:
            pickle.dumps(result)
            sent = (result, _portable(error))
        except Exception:  # noqa: BLE001 - an unpicklable result is only needed on rank 0
            sent = (None, _portable(error))
    got = broadcast_object(sent)
    if is_main():
        if error is not None:
            raise error
        return result
    if got[1] is not None:
        raise got[1]
    return got[0]


def _portable(error: BaseException | None):
    if error is None:
        return None
    if isinstance(error, OpenOODError):
        try:
            pickle.loads(pickle.dumps(error))
            return error
        except Exception:  # noqa: BLE001
            return OpenOODError(str(error))
    return OpenOODError(f"rank 0 failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 in rank order; the ranks' row counts may differ
    (the other dims and the dtype must agree). Result on ``tensor``'s device; autograd does not flow."""
    if not is_distributed():
        return tensor
    work = tensor.detach().contiguous()
    device = work.device
    work = work.to(collective_device(work))
    with guard("gathering a tensor"):
        sizes = torch.tensor([len(work)], device=work.device, dtype=torch.long)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
        dist.all_gather(all_sizes, sizes)
        counts = [int(s.item()) for s in all_sizes]
        biggest = max(counts)
        padded = work.new_zeros((biggest, *work.shape[1:]))
        padded[:len(work)] = work
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]).to(device)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (on whatever device it lives: it travels to
    :func:`collective_device` and back); a no-op in a single process."""
    if is_distributed():
        work = tensor.to(collective_device(tensor))
        with guard("all_reduce"):
            dist.all_reduce(work)
        if work is not tensor:
            tensor.copy_(work)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over the ranks, in place (see :func:`all_reduce_sum_`)."""
    if is_distributed():
        all_reduce_sum_(tensor)
        tensor /= world_size()
    return tensor


# ---------------------------------------------------------------------------------------------- evaluation shards
def shard_range(n: int, what: str = "split") -> range:
    """This rank's contiguous block of ``range(n)``: blocks in rank order cover it exactly once, sizes
    differ by at most one. ConfigError when there are more processes than samples."""
    world, r = world_size(), rank()
    if world > n:
        raise ConfigError(f"{what}: {n} sample(s) for {world} processes; run torchrun with "
                          f"--nproc_per_node <= {n} (each process needs at least one sample)")
    start, stop = (r * n) // world, ((r + 1) * n) // world
    return range(start, stop)


def shard_loader(loader: torch.utils.data.DataLoader, what: str = "split") -> torch.utils.data.DataLoader:
    """A loader over this rank's :func:`shard_range` of ``loader.dataset`` (same batch size, collate,
    workers); ``loader`` itself outside torchrun. Must not be a shuffling loader."""
    if not is_distributed():
        return loader
    indices = list(shard_range(len(loader.dataset), what))
    if callable(getattr(loader, "subset", None)):  # a loader of decoded images shards itself
        return loader.subset(indices)
    subset = torch.utils.data.Subset(loader.dataset, indices)
    return torch.utils.data.DataLoader(subset, batch_size=loader.batch_size, shuffle=False,
                                       collate_fn=loader.collate_fn, **loader_options_of(loader))


def loader_options_of(loader) -> dict:
    """The worker/pinning options of an existing DataLoader, to build another like it."""
    opts = {"num_workers": loader.num_workers, "pin_memory": loader.pin_memory}
    if loader.num_workers > 0:
        opts["persistent_workers"] = loader.persistent_workers
        opts["prefetch_factor"] = loader.prefetch_factor
    return opts


# ---------------------------------------------------------------------------------------------- training samplers
def train_sampler(dataset, seed: int) -> torch.utils.data.DistributedSampler:
    """Shuffling sampler over this rank's share of ``dataset``; epoch e's order depends on (seed, e)
    only (the engine calls ``set_epoch``). Every rank gets ``ceil(N / world)`` indices (padded)."""
    n = len(dataset)
    if world_size() > n:
        raise ConfigError(f"trainer: the training split has {n} sample(s) for {world_size()} processes "
                          f"(run torchrun with --nproc_per_node <= {n})")
    return torch.utils.data.DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True,
                                               seed=seed, drop_last=False)


class ShardedBatchSampler:
    """Deal the batches of ``inner`` (a batch sampler with optional ``set_epoch``) over the ranks: rank r
    takes batches r, r + W, r + 2W, ... of each epoch; the list is padded by repeating its first batches
    so every rank has ``ceil(len(inner) / W)`` of them (equal step counts keep DDP in lock-step).
    ``state_dict``/``load_state_dict`` pass through to ``inner``."""

    def __init__(self, inner, rank_: int | None = None, world: int | None = None):
        self.inner = inner
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world
        if len(inner) == 0:
            raise ConfigError("trainer: the batch sampler yields no batch")

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.inner) / self.world)

    def __iter__(self) -> Iterator[list[int]]:
        batches: Sequence = list(self.inner)
        total = len(self) * self.world
        batches = [batches[i % len(batches)] for i in range(total)]
        return iter(batches[self.rank::self.world])

    def state_dict(self) -> dict:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)
