"""Network outputs per benchmark split: one forward pass each, shared in memory and cached on disk."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from ..datasets import Benchmark, Split
from ..datasets.imglist import read_imglist
from ..features import EmptySplit, FeatureCache, NetOutputs, cache_key, extract_outputs, file_sha256
from .context import RunContext, network_spec


class OutputStore:
    """``get(split)`` returns the split's :class:`NetOutputs`, running the network only on a cache miss.

    The cache key covers the checkpoint's content hash, the network config, the image list's content
    hash, the preprocessing and the data root, so any change to them is a miss. An entry whose sample
    count disagrees with its image list is stale and recomputed.
    """

    def __init__(self, net, bench: Benchmark, ckpt: Path, cfg: DictConfig, ctx: RunContext):
        self.net, self.bench, self.ctx = net, bench, ctx
        self.cache = FeatureCache(cfg.get("cache_dir"))
        self.batch_size, self.workers = int(cfg.get("batch_size", 256)), int(cfg.get("num_workers", 0))
        self.base_key = {"checkpoint": file_sha256(ckpt), "network": network_spec(cfg),
                         **bench.preprocessing_key()}
        self.memo: dict[str, NetOutputs] = {}
        self.forward_passes = 0

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
        if split.name not in self.memo:
            expected = len(read_imglist(split.imglist))
            self.memo[split.name] = self.cache.get_or_compute(key, lambda: self._forward(split), expected)
        return self.memo[split.name]

    def example(self, split_name: str):
        """A couple of the split's images (to probe layer shapes), without touching the cache."""
        loader = self.bench.loader(self.bench.split(split_name), batch_size=2, num_workers=0)
        for batch in loader:
            if len(batch[0]):
                return batch[0].to(self.ctx.device)
        raise EmptySplit(f"{split_name}: no readable image to probe the network's layers with")

    def loader_for(self, split_name: str):
        """A fresh (unshuffled) loader over a split, for postprocessors that need the network."""
        return self.bench.loader(self.bench.split(split_name), batch_size=self.batch_size,
                                 num_workers=self.workers)

    def _forward(self, split: Split, consumers=()) -> NetOutputs:
        self.forward_passes += 1
        with self.ctx.timed("forward"):
            return extract_outputs(self.net, self.loader_for(split.name), self.ctx.device,
                                   desc=f"forward {split.name}", consumers=consumers)
