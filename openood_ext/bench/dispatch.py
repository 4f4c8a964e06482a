"""``openood-ext bench WHAT``: the one dispatch table over the bench modules.

Each bench module has ``main(argv) -> int``; :data:`BENCHES` names them all, with plain imports.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from . import ceiling, ddp, forward, imglist, knn, loader, npos, oaml, postprocessors, train, zoo_scaling

#: ``openood-ext bench <name>`` -> that bench's main
BENCHES: dict[str, Callable[[list[str]], int]] = {
    "postprocessors": postprocessors.main,  # the zoo's cost against one forward pass
    "train": train.main,                    # the engine against a plain torch loop
    "npos": npos.main,                      # NPOS synthesis throughput
    "oaml": oaml.main,                      # OAML generation and step costs
    "ddp": ddp.main,                        # torchrun data parallelism against one process
    "forward": forward.main,                # forward pass of the shared outputs
    "imglist": imglist.main,                # image-list loading
    "loader": loader.main,                  # per-image DataLoader against the tensor data path
    "knn": knn.main,                        # KNN search backends
    "zoo-scaling": zoo_scaling.main,        # the gradient-free zoo as methods are added
    "ceiling": ceiling.main,                # a training step on device-resident random data
}


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] not in BENCHES:
        got = f"'{argv[0]}'" if argv else "nothing"
        print(f"usage: openood-ext bench {{{','.join(BENCHES)}}} [options]  (got {got})", file=sys.stderr)
        return 2
    return BENCHES[argv[0]](argv[1:])
