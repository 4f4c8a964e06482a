"""HSC: hypersphere classification, FCDD's flat baseline (Ruff et al. 2020; FCDD ``training/hsc.py``).

d = sqrt(||f(x)||^2 + 1) - 1 on the network's feature vector (no explicit centre); normal samples
contribute d, anomalous ones -log(1 - exp(-d) + 1e-31); batch mean. Online supervision (outliers,
``supervise_mode``, ``p_outlier``) as FCDD (:class:`~.fcdd.OnlineSupervision`; the map path is not
used). Score: d. Heatmap: |dd/dx| summed over channels. As FCDD, the pixel AUROC is computed on this raw
map and only the displayed grids are Gaussian-blurred (:meth:`display_maps`: kernel = the matching FCDD
net's receptive field made odd, std ``gauss_std``, or FCDD's ``kernel_size_to_std`` when it is null);
``blur_pixel_maps: true`` scores the blurred map instead.
"""

from __future__ import annotations

import torch
import torchvision.transforms.functional as TF

from ..networks.receptive import kernel_size_to_std
from ..schema import PositiveInt, Probability
from .fcdd import OnlineSupervision, SuperviseMode, anomaly_term, pseudo_huber
from .registry import TRAINERS


def blur_heatmaps(maps: torch.Tensor, kernel: int, std: float | None) -> torch.Tensor:
    """Gaussian blur of maps [B, H, W] (kernel made odd and at most the image size)."""
    k = min(int(kernel), 2 * min(maps.shape[-2:]) - 1)
    k += 1 - k % 2
    if k < 3:
        return maps
    std = float(std) if std else kernel_size_to_std(k)
    return TF.gaussian_blur(maps.unsqueeze(1), [k, k], [std, std])[:, 0]


def field_size(net) -> int:
    rf = getattr(net, "rf", None)
    return int(rf.r) if rf is not None else 5


class BlurredDisplay:
    """Heatmap display of FCDD's baselines: the grids show blurred maps, the pixel AUROC the raw ones."""

    blur_pixel_maps = False

    def display_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Maps [B, H, W] as the heatmap grids show them (blurred like FCDD's ``_image_processing``)."""
        return blur_heatmaps(maps, field_size(self.net), getattr(self.net, "gauss_std", None))

    def _pixel_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return self.display_maps(maps) if self.blur_pixel_maps else maps


@TRAINERS.register("hsc")
class HSCTrainer(BlurredDisplay, OnlineSupervision):
    """HSC with online supervision (see the module doc); networks ``hsc_cnn28`` / ``hsc_cnn32``."""

    def __init__(self, supervise_mode: SuperviseMode = "noise", p_outlier: Probability = 0.5,
                 published_other_quirk: bool = False, blur_pixel_maps: bool = False, epoch_repeats: PositiveInt = 1):
        super().__init__(supervise_mode, p_outlier, False, published_other_quirk, epoch_repeats)
        self.blur_pixel_maps = bool(blur_pixel_maps)

    def training_step(self, batch):
        images, labels, _ = self.supervised_batch(batch)
        d = pseudo_huber(self.net(images).flatten(1).norm(dim=1))
        loss = torch.where(labels.bool(), anomaly_term(d), d).mean()
        return {"loss": loss, "frac_anomalous": labels.float().mean()}

    def anomaly_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d [B], gradient heatmaps [B, H, W], raw unless ``blur_pixel_maps``); higher = more anomalous."""
        self.net.eval()
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            d = pseudo_huber(self.net(x).flatten(1).norm(dim=1))
            grad, = torch.autograd.grad(d.sum(), x)
        heat = grad.abs().sum(1)
        return d.detach(), self._pixel_maps(heat)
