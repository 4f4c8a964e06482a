"""Network outputs per benchmark split: one forward pass each, shared in memory and cached on disk.

Under torchrun each rank forwards one contiguous shard of a split and the shards are gathered back in
the original order (:mod:`openood_ext.distributed`); rank 0 decides cache hits and writes the cache."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from .. import distributed
from ..datasets import Benchmark, Split
from ..datasets.data_settings import DataSettings
from ..datasets.eval_batches import eval_loader
from ..datasets.imglist import read_imglist
from ..features import (
    EmptySplit,
    FeatureCache,
    NetOutputs,
    cache_key,
    extract_outputs,
    file_sha256,
    last_linear_layer,
)
from ..utils.runtime import (
    autocast,
    check_compile,
    check_precision,
    loader_options,
    prepare_module,
)
from .context import RunContext, network_spec


class OutputStore:
    """``get(split)`` returns the split's :class:`NetOutputs`, running the network only on a cache miss.

    The cache key covers the checkpoint's content hash, the network config, the image list's content
    hash, the preprocessing and the data root, so any change to them is a miss. An entry whose sample
    count disagrees with its image list is stale and recomputed.

    A split's images come from the decoded-image cache in whole batches where ``data.backend`` allows it
    (:mod:`openood_ext.datasets.eval_batches`: the same tensors as the per-image DataLoader, so the key
    does not name the backend), else through the per-image DataLoader.
    """

    def __init__(self, net, bench: Benchmark, ckpt: Path, cfg: DictConfig, ctx: RunContext):
        self.net, self.bench, self.ctx = net, bench, ctx
        self.cache = FeatureCache(cfg.get("cache_dir"))
        self.batch_size, self.workers = int(cfg.get("batch_size", 256)), int(cfg.get("num_workers", 0))
        self.loader_options = loader_options(cfg, ctx.device)
        self.base_key = {"checkpoint": file_sha256(ckpt), "network": network_spec(cfg),
                         **bench.preprocessing_key()}
        self.data = DataSettings.from_config(cfg)
        self._decoded: dict[str, object] = {}  # split -> its decoded-image loader, or None (per-image path)
        self.memo: dict[str, NetOutputs] = {}
        self.failed: dict[str, EmptySplit] = {}  # splits of which no image could be read (prefetch)
        self.forward_passes = 0
        # GPU paths of the forward pass: precision (part of the cache key unless fp32), channels_last, compile
        self.precision = check_precision("precision", cfg.get("precision", "fp32"), ctx.device)
        if self.precision != "fp32":
            self.base_key["precision"] = self.precision
        self.forward_net = prepare_module(net, bool(cfg.get("channels_last", False)),
                                          check_compile("compile", cfg.get("compile")))

    def get(self, split: Split, consumers=()) -> NetOutputs:
        """The split's outputs. With tap ``consumers`` (see :mod:`openood_ext.features`) the network runs
        even on a cache hit, since tapped layers are not cached; its outputs refresh the cache and the
        returned object's ``tap_results`` holds the consumers' results."""
        key = cache_key(**self.base_key, imglist=file_sha256(split.imglist))
        if consumers:
            outputs = self._forward(split, consumers)
            self.cache.save(key, outputs)
            self.memo[split.name] = outputs
            return outputs
        if split.name in self.failed:
            raise self.failed[split.name]
        if split.name not in self.memo:
            expected = len(read_imglist(split.imglist))
            if distributed.is_distributed():
                self.memo[split.name] = self._get_sharded(key, split, expected)
            else:
                self.memo[split.name] = self.cache.get_or_compute(key, lambda: self._forward(split), expected)
        return self.memo[split.name]

    def outputs(self, split_name: str, consumers=()) -> NetOutputs:
        """``get`` by split name: the source protocol of :mod:`openood_ext.postprocessors.schedule`."""
        return self.get(self.bench.split(split_name), consumers)

    def prefetch(self, ood_sets, aps: bool = False) -> None:
        """Outputs of id_train, id_val, id_test, ``ood_sets`` (and ood_val with ``aps``) in this order, so
        that under torchrun all ranks take part in every split's pass before rank 0 goes on alone. A
        split with no readable image is remembered: ``get`` raises its EmptySplit again."""
        names = {s.name for s in self.bench.splits()}
        wanted = [self.bench.split(n) for n in ("id_train", "id_val", "id_test")] + list(ood_sets)
        if aps and "ood_val" in names:
            wanted.append(self.bench.split("ood_val"))
        for split in wanted:
            try:
                self.get(split)
            except EmptySplit as exc:
                self.failed[split.name] = exc

    def _get_sharded(self, key: str, split: Split, expected: int) -> NetOutputs | None:
        """torchrun: rank 0's cache entry, else every rank forwards its shard and all are gathered in
        order (rank 0 writes the cache). Ranks other than 0 get None on a cache hit (they need nothing)."""
        hit = self.cache.load(key, expected) if distributed.is_main() else None
        if distributed.broadcast_object(hit is not None):
            self.cache.hits += 1
            return hit
        self.cache.misses += 1
        self.forward_passes += 1
        with self.ctx.timed("forward"):
            loader = distributed.shard_loader(self.loader_for(split.name), what=f"split {split.name}")
            try:
                with autocast(self.precision, self.ctx.device):
                    part = extract_outputs(self.forward_net, loader, self.ctx.device, desc=f"forward {split.name}")
            except EmptySplit as exc:  # this shard only: the split may still have readable images
                part = exc
            outputs = gather_outputs(part, self.net, f"forward {split.name}")
        if distributed.is_main():
            self.cache.save(key, outputs)
        return outputs

    def example(self, split_name: str):
        """A couple of the split's images (to probe layer shapes), without touching the cache."""
        loader = self.bench.loader(self.bench.split(split_name), batch_size=2, num_workers=0)
        for batch in loader:
            if len(batch[0]):
                return batch[0].to(self.ctx.device)
        raise EmptySplit(f"{split_name}: no readable image to probe the network's layers with")

    def loader_for(self, split_name: str):
        """A fresh (unshuffled) loader over a split, for postprocessors that need the network
        (``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor`` from the config),
        or the split's batches from the decoded-image cache (decided once per split, then reused)."""
        if split_name not in self._decoded:
            self._decoded[split_name] = eval_loader(self.bench, self.bench.split(split_name), self.data,
                                                    self.batch_size, self.ctx.device, self.ctx.log)
        if self._decoded[split_name] is not None:
            return self._decoded[split_name]
        loader = self.bench.loader(self.bench.split(split_name), batch_size=self.batch_size,
                                   num_workers=self.workers)
        if self.loader_options == distributed.loader_options_of(loader):
            return loader
        return torch.utils.data.DataLoader(loader.dataset, batch_size=self.batch_size, shuffle=False,
                                           collate_fn=loader.collate_fn, **self.loader_options)

    def _forward(self, split: Split, consumers=()) -> NetOutputs:
        self.forward_passes += 1
        with self.ctx.timed("forward"), autocast(self.precision, self.ctx.device):
            # a compiled network runs its tapped passes compiled too (TapSet hooks the modules it wraps)
            return extract_outputs(self.forward_net, self.loader_for(split.name),
                                   self.ctx.device, desc=f"forward {split.name}", consumers=consumers)


def gather_outputs(part: NetOutputs | EmptySplit, net, desc: str) -> NetOutputs:
    """Every rank's shard outputs (or its EmptySplit) concatenated in rank order, on every rank."""
    mine = None if isinstance(part, EmptySplit) else (tuple(part.logits.shape[1:]), tuple(part.features.shape[1:]))
    infos = distributed.all_gather_object((mine, part.skipped))
    skipped = sum(n for _, n in infos)
    shapes = next((s for s, _ in infos if s is not None), None)
    if shapes is None:
        raise EmptySplit(f"{desc}: none of the split's {skipped} images could be read", skipped)
    if isinstance(part, EmptySplit):
        part = NetOutputs(torch.zeros(0, *shapes[0]), torch.zeros(0, *shapes[1]), torch.zeros(0, dtype=torch.long))
    return NetOutputs(distributed.gather_rows(part.logits), distributed.gather_rows(part.features),
                      distributed.gather_rows(part.labels), last_linear_layer(net), skipped)
