"""Shared mechanics of EOE's objectives (Liznerski et al., TMLR 2022, "Exposing Outlier Exposure: What
Can Be Learned From Few, One, and Zero Outlier Images"; ``liznerski/eoe`` ``src/eoe/training/``).

Batches are B normals (``batch.images``) + B outlier images (``batch.outliers`` from the outlier source,
EOE's ``BalancedConcatLoader``), forwarded together (batch-norm sees both); labels 0 = normal,
1 = outlier/anomalous. The per-sample losses are averaged over the 2B samples. Every objective's
``anomaly_scores(images) -> (scores [B], None)`` is *higher = more anomalous* (the AD pipeline's
convention). ``trainer.outliers`` defaults to the benchmark's OE set; give e.g.
``{name: oe_images, imglist: ..., limit: N}`` for EOE's OE-limit N.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .trainer import Trainer


class EOEObjective(Trainer):
    """Base of the ``eoe_*`` trainers: subclasses implement :meth:`loss` and :meth:`score` on network outputs."""

    needs_outliers = "images"
    default_outliers = {"name": "oe_images"}
    needs_logit = False  # True: the network must end in a 1-logit head (``clf: true``)

    def setup(self, net, ctx):
        super().setup(net, ctx)
        has_head = bool(getattr(net, "clf", False))
        if self.needs_logit != has_head:
            name = type(self).__name__
            want = "a 1-logit head (network.clf: true)" if self.needs_logit else "no classifier head (network.clf: false)"
            raise ConfigError(f"trainer {name}: the network must have {want}, e.g. eoe_cnn32 / eoe_cnn28")

    def joint_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(network outputs of normals + outliers [N, ...], labels [N] 0/1)."""
        images = batch.images
        labels = torch.zeros(len(images), dtype=torch.long, device=images.device)
        if self.needs_outliers and batch.outliers is not None:
            out = batch.outliers.to(images.device, images.dtype)
            images = torch.cat([images, out])
            labels = torch.cat([labels, torch.ones(len(out), dtype=torch.long, device=labels.device)])
        elif self.needs_outliers:
            raise ConfigError(f"trainer {type(self).__name__}: the objective needs outlier images (trainer.outliers)")
        return self.net(images), labels

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, outputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch):
        outputs, labels = self.joint_batch(batch)
        loss = self.loss(outputs, labels)
        with torch.no_grad():  # normals first, then outliers (joint_batch): split by count, no host read
            s = self.score(outputs.detach())
            n = len(batch.images)
            terms = {"score_normal": s[:n].mean()}
            if len(s) > n:
                terms["score_outlier"] = s[n:].mean()
        return {"loss": loss, **terms}

    @torch.no_grad()
    def anomaly_scores(self, images: torch.Tensor):
        """(scores [B], None): higher = more anomalous; the network in eval mode."""
        self.net.eval()
        return self.score(self.net(images)).flatten(), None
