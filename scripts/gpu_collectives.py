"""A single-process process group (world size 1) through the collectives the toolkit calls.

    python scripts/gpu_collectives.py --backend nccl     # on a CUDA machine (gloo: a CPU rehearsal)

The toolkit's helpers in :mod:`openood_ext.distributed` skip the collectives when the world has one
process, so this calls what they call under torchrun, on the tensors they pass (device tensors for
nccl, and the CPU tensors of the epoch's loss means, ``TermMeter.reduce_over_ranks``): all_reduce,
all_gather, broadcast, all_gather_object, broadcast_object_list, barrier. Prints
``collectives: PASS ...`` or the first failure, exit status 0 / 1."""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.distributed as dist


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    a = p.parse_args(argv)
    from openood_ext.distributed import free_port
    from openood_ext.trainers.engine import TermMeter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dev = torch.device("cuda", 0) if a.backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(a.backend, rank=0, world_size=1, timeout=datetime.timedelta(seconds=60))
    done, failed = [], []

    def check(name, fn):
        try:
            fn()
            done.append(name)
        except Exception as exc:  # noqa: BLE001 - reported, the others still run
            failed.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")

    def all_reduce():
        t = torch.arange(4.0, device=dev)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]

    def all_gather():
        t = torch.arange(3, device=dev)
        out = [torch.empty_like(t)]
        dist.all_gather(out, t)
        assert torch.equal(out[0], t)

    def broadcast():
        t = torch.full((2,), 7.0, device=dev)
        dist.broadcast(t, src=0)
        assert t.tolist() == [7.0, 7.0]

    def objects():
        got = [None]
        dist.all_gather_object(got, {"rank": 0})
        box = [{"x": 1}]
        dist.broadcast_object_list(box, src=0)
        assert got == [{"rank": 0}] and box == [{"x": 1}]

    def loss_means():  # the engine's epoch means: float64 values on the host
        meter = TermMeter()
        meter.update({"loss": torch.tensor(2.0, device=dev)}, 4)
        meter.reduce_over_ranks()
        assert meter.means() == {"loss": 2.0}

    for name, fn in (("all_reduce", all_reduce), ("all_gather", all_gather), ("broadcast", broadcast),
                     ("objects", objects), ("loss_means", loss_means), ("barrier", dist.barrier)):
        check(name, fn)
    dist.destroy_process_group()
    verdict = "PASS" if not failed else "FAIL"
    print(f"collectives: {verdict} ({a.backend}, {len(done)}/{len(done) + len(failed)}: {', '.join(done)})"
          + ("" if not failed else f"; {'; '.join(failed)}"))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
