"""Stable-Diffusion outliers under torchrun: rank 0 generates into the shared folder, the others wait."""

from __future__ import annotations

import pytest
import torch

from openood_ext import distributed
from openood_ext.synthesizers import SYNTHESIZERS, SourceContext
from openood_ext.synthesizers import sd_outliers

GEN = dict(model="tiny-random", classes=["cat", "dog"], id_features="synthetic", K=5, select=4, candidates=20,
           keep=2, repeats=2, images_per_class=2, chunk=2, steps=2, size=16, save_size=16, seed=3)


@pytest.mark.parametrize("rank", [0, 1])
def test_generation_runs_on_rank_0_only_and_every_rank_waits_for_it(monkeypatch, tmp_path, rank):
    events = []
    monkeypatch.setattr(sd_outliers, "ensure_generated", lambda *a, **kw: events.append("generate") or {"s": 1})
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)

    def broadcast(obj, src=0):  # the collective every rank joins: rank 0's (result, error) reaches all
        events.append("broadcast")
        return ({"s": 1}, None) if rank != src else obj

    monkeypatch.setattr(distributed, "broadcast_object", broadcast)
    src = SYNTHESIZERS.build({"name": "sd_text_outliers", "root": str(tmp_path / "gen"), "generate": True, **GEN})
    src.setup(SourceContext(None, torch.device("cpu"), 0, 4, 1, rank=rank, world_size=2))
    assert events == (["generate", "broadcast"] if rank == 0 else ["broadcast"])
