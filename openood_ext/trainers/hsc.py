"""HSC: hypersphere classification, FCDD's flat baseline (Ruff et al. 2020; FCDD ``training/hsc.py``).

d = sqrt(||f(x)||^2 + 1) - 1 on the network's feature vector (no explicit centre); normal samples
contribute d, anomalous ones -log(1 - exp(-d) + 1e-31); batch mean. Online supervision (outliers,
``supervise_mode``, ``p_outlier``) as FCDD (:class:`~.fcdd.OnlineSupervision`; the map path is not
used). Score: d. Heatmap: |dd/dx| summed over channels, Gaussian-blurred (kernel = the matching FCDD
net's receptive field made odd, std ``gauss_std``).
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

from ..schema import Probability
from .fcdd import OnlineSupervision, SuperviseMode, anomaly_term, pseudo_huber
from .registry import TRAINERS


def blur_heatmaps(maps: torch.Tensor, kernel: int, std: float | None) -> torch.Tensor:
    """Gaussian blur of maps [B, H, W] (kernel made odd and at most the image size)."""
    k = min(int(kernel), 2 * min(maps.shape[-2:]) - 1)
    k += 1 - k % 2
    if k < 3:
        return maps
    std = float(std) if std else 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    return TF.gaussian_blur(maps.unsqueeze(1), [k, k], [std, std])[:, 0]


def field_size(net) -> int:
    rf = getattr(net, "rf", None)
    return int(rf.r) if rf is not None else 5


@TRAINERS.register("hsc")
class HSCTrainer(OnlineSupervision):
    """HSC with online supervision (see the module doc); networks ``hsc_cnn28`` / ``hsc_cnn32``."""

    def __init__(self, supervise_mode: SuperviseMode = "noise", p_outlier: Probability = 0.5,
                 published_other_quirk: bool = False):
        super().__init__(supervise_mode, p_outlier, False, published_other_quirk)

    def training_step(self, batch):
        images, labels, _ = self.supervised_batch(batch)
        d = pseudo_huber(self.net(images).flatten(1).norm(dim=1))
        loss = torch.where(labels.bool(), anomaly_term(d), d).mean()
        return {"loss": loss, "frac_anomalous": labels.float().mean()}

    def anomaly_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d [B], blurred gradient heatmaps [B, H, W]); higher = more anomalous."""
        self.net.eval()
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            d = pseudo_huber(self.net(x).flatten(1).norm(dim=1))
            grad, = torch.autograd.grad(d.sum(), x)
        heat = grad.abs().sum(1)
        return d.detach(), blur_heatmaps(heat, field_size(self.net), getattr(self.net, "gauss_std", None))
