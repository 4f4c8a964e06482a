"""NPOS's test-time score (Tao et al., "Non-Parametric Outlier Synthesis", ICLR 2023).

NPOS trains the network with synthesized boundary outliers; at test time it scores with the distance to
the k-th nearest ID training embedding on the unit sphere, i.e. the deep-KNN score (``knn``) applied to
the L2-normalised embeddings of the NPOS-trained network (its ``features``: the raw penultimate feature of
``npos_resnet18_32x32``/``npos_net``, not the projection head). Training: trainer ``npos``
(:mod:`openood_ext.trainers.npos`) with the ``npos`` outlier source (:mod:`openood_ext.synthesizers.npos`).
K: 300 in the paper (``configs/experiments/npos/test_ood_npos_cifar10.yml``); OpenOOD v1.5 searches
{50, 100, 200, 500, 1000} (``aps_grid`` in ``configs/postprocessors/npos.yml``).
Note: OAML (Outlier-Aware Metric Learning) likewise needs no postprocessor of its own: its test-time
score is the energy, ``ebo``.
"""

from __future__ import annotations

from .knn import KNNPostprocessor
from .registry import POSTPROCESSORS


@POSTPROCESSORS.register("npos")
class NPOSPostprocessor(KNNPostprocessor):
    """NPOS: conf = -||e/||e|| - e_k||, distance to the k-th nearest normalised ID train embedding; higher = more ID.

    Same computation as ``knn`` (OpenOOD v1.5 default k = 50), registered under NPOS's name so NPOS
    configs name their own method.
    """
