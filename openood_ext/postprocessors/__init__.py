"""Postprocessors: turn network outputs into confidence scores (higher = more in-distribution).

Public contract::

    from openood_ext.postprocessors import POSTPROCESSORS
    pp = POSTPROCESSORS.build({"name": "knn", "k": 50})
    pp.fit(train_outputs)
    conf = pp.score(test_outputs)
"""

from .base import Postprocessor
from .registry import POSTPROCESSORS
from . import ebo, hsc, knn, msp  # noqa: F401  (registration)
from . import (ash, dice, gen, gradnorm, gram, klm, mds, mds_ensemble, mls, nnguide, npos,  # noqa: F401
               odin, openmax, react, relation, residual, rmds, she, temp_scaling, vim)
from . import vmdls as _vmdls  # noqa: F401  (registration: VMDLS)
from . import cfood, fdbd, gmm, grood, nci, rankfeat, scale, ssd, vra  # noqa: F401  (registration: the later OpenOOD zoo)
from . import adascale, dropout, ensemble, iodin  # noqa: F401  (registration: gradient and multi-pass methods)

__all__ = ["POSTPROCESSORS", "Postprocessor"]
