"""A third-party trainer: plain cross-entropy with label smoothing, advertised as an entry point."""

import torch.nn.functional as F

from openood_ext.trainers import Trainer


class DemoSmoothCE(Trainer):
    """Cross-entropy with label smoothing ``smoothing``."""

    def __init__(self, smoothing: float = 0.1):
        self.smoothing = smoothing

    def training_step(self, batch):
        return {"loss": F.cross_entropy(self.net(batch.images), batch.labels, label_smoothing=self.smoothing)}
