"""Networks. Every classifier supports ``net(x, return_feature=True) -> (logits, features)``."""

from .registry import NETWORKS
from . import fcdd, npos_net, resnet, small_cnn  # noqa: F401  (registration)
from . import vmdls, vmdls_ae  # noqa: F401  (registration: VMDLS)
from . import anchor_cosine as _anchor_cosine, timm_vit as _timm_vit  # noqa: F401  (registration: OAML)
from . import eoe_cnn as _eoe_cnn, eoe_resnet as _eoe_resnet  # noqa: F401  (registration: EOE)
from . import timm_backbone as _timm_backbone, openood_compat as _openood_compat  # noqa: F401  (registration)
from . import clip as _clip  # noqa: F401  (registration: EOE CLIP)

__all__ = ["NETWORKS"]
