"""A training set read ``times`` times per epoch (FCDD's MVTec-AD ``enlarge``: the stored training tensor
repeated ten times, so that one epoch -- and one step of a per-epoch schedule -- covers ten passes)."""

from __future__ import annotations

import torch


class RepeatedDataset(torch.utils.data.Dataset):
    """Item ``i`` is ``dataset[i % len(dataset)]``; ``len`` is ``times x len(dataset)``. A shuffling loader
    then draws one permutation of the repeated list (FCDD's DataLoader over ``data.repeat(10, ...)``), so
    the copies of an image are spread over the epoch, not in ten consecutive passes. ``transform`` and
    ``labels()`` are the wrapped dataset's (labels tiled)."""

    def __init__(self, dataset, times: int):
        if int(times) < 1:
            raise ValueError(f"RepeatedDataset: times must be >= 1, got {times}")
        self.dataset, self.times = dataset, int(times)

    def __len__(self) -> int:
        return self.times * len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value

    def labels(self) -> torch.Tensor:
        return self.dataset.labels().repeat(self.times)
