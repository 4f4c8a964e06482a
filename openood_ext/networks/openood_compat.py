"""OpenOOD v1.5's network names, so its published checkpoints evaluate here unchanged.

OpenOOD's ``best.ckpt`` files are plain state dicts (``torch.save(net.state_dict())``, with a ``module.``
prefix when saved from DDP); ``network.checkpoint`` loads them (:func:`~openood_ext.networks.checkpoint.
load_checkpoint` strips ``module.``) into the network of the same name here, whose state-dict names are
OpenOOD's:

===================  ==============================  ===============================================
OpenOOD network      benchmarks                      here
===================  ==============================  ===============================================
``resnet18_32x32``   CIFAR-10 / CIFAR-100            ``resnet18_32x32`` (networks/resnet.py; same
                                                     names: ``conv1``, ``layer1.0.shortcut.0``, ``fc``)
``resnet18_224x224`` ImageNet-200                    ``resnet18_224x224`` below (torchvision's ResNet-18)
``resnet50``         ImageNet-1K (torchvision's      ``resnet50`` below, or ``{name: timm, model:
                     IMAGENET1K_V1 weights)          resnet50}``: timm's ResNet-50 has torchvision's
                                                     names and layout (stride in the 3x3 conv)
===================  ==============================  ===============================================

Both presets here are :class:`~openood_ext.networks.timm_backbone.TimmBackbone` with a fixed timm
architecture (timm's ``resnet18`` / ``resnet50`` compute the same function as torchvision's for the same
weights; tests/networks/test_openood_compat.py checks this against OpenOOD's own class definitions).
"""

from __future__ import annotations

from .registry import NETWORKS
from .timm_backbone import TimmBackbone


@NETWORKS.register("resnet18_224x224")
class ResNet18_224x224(TimmBackbone):
    """OpenOOD's ``resnet18_224x224`` (ImageNet-200): torchvision's ResNet-18, 512-d features."""

    def __init__(self, num_classes: int = 200, pretrained: bool | str = False, pretrained_file: str | None = None):
        super().__init__("resnet18", num_classes=num_classes, pretrained=pretrained, pretrained_file=pretrained_file)


@NETWORKS.register("resnet50")
class ResNet50(TimmBackbone):
    """OpenOOD's ``resnet50`` (ImageNet-1K): torchvision's ResNet-50, 2048-d features."""

    def __init__(self, num_classes: int = 1000, pretrained: bool | str = False, pretrained_file: str | None = None):
        super().__init__("resnet50", num_classes=num_classes, pretrained=pretrained, pretrained_file=pretrained_file)
