"""CPU seconds of Gram's and GMM's heavy parts on CIFAR-size inputs, each alternative measured in one run.

* Gram, one batch of images through every Conv2d/ReLU output of a ResNet-18 (random weights): the row
  sums with the fused kernel for orders 1..5 against the general kernel, the float32 roots, and the
  scoring of the batch;
* GMM's PCA of N x 32,768 features with a decaying spectrum (as a stage's flattened output): the exact
  PCA through the N x N sample Gram matrix against sklearn's randomized solver, and the cosine of the
  largest principal angle between the two 50-d subspaces and sklearn's exact (``full``) one at the
  smallest N.

    OMP_NUM_THREADS=1 python scripts/profile_gram_gmm.py [--width 64] [--batch 256] [--samples 1000 2048 3000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def cpu_seconds(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def profile_gram(width: int, batch: int) -> None:
    from openood_ext.networks.registry import NETWORKS
    from openood_ext.postprocessors import gram_rowsums
    from openood_ext.postprocessors.gram import GramPostprocessor, gram_features
    from openood_ext.postprocessors.layer_features import LayerTaps, resolve_layers

    torch.manual_seed(0)
    net = NETWORKS.build({"name": "resnet18_32x32", "num_classes": 10, "width": width}).eval()
    x = torch.randn(batch, 3, 32, 32)
    names = resolve_layers(net, "conv_relu", x[:2])
    with torch.no_grad(), LayerTaps(net, names, transform=lambda t: t.clone()) as taps:
        logits = net(x)
        maps = taps.pop()
    gram_rowsums.load_kernel()
    powers = [1, 2, 3, 4, 5]
    general = gram_rowsums._numba_kernel()

    def general_sums():
        for m in maps:
            f = m.flatten(2).contiguous().numpy()
            general(f, np.asarray(powers, dtype=np.int64), np.empty((5, *f.shape[:2]), dtype=np.float32))

    _, t_general = cpu_seconds(general_sums)
    _, t_fused = cpu_seconds(lambda: [gram_rowsums.gram_row_sums(m, powers) for m in maps])
    feats, t_features = cpu_seconds(lambda: [gram_features(m, powers) for m in maps])
    pp = GramPostprocessor()
    pp.layer_names = names
    reduced = {tap.key: g for tap, g in zip(pp._taps(), feats)}
    fit = pp.fit_taps(net, x[:2])
    fit.update(reduced, logits, torch.randint(0, 10, (batch,)))
    fit.finish()
    score = pp.score_taps()
    _, t_score = cpu_seconds(score.update, reduced, logits, None)
    print(f"gram, {len(names)} layers, batch {batch}, CPU s: row sums fused {t_fused:.3f} / general kernel "
          f"{t_general:.3f}; roots {t_features - t_fused:.3f}; scoring {t_score:.3f}")


def profile_pca(samples: list[int], dim: int = 32768, k: int = 50) -> None:
    from sklearn.decomposition import PCA

    from openood_ext.postprocessors.common import principal_axes

    rng = np.random.default_rng(0)
    rank = min(200, dim)
    basis = rng.standard_normal((rank, dim)).astype(np.float32)

    def largest_angle_cos(a, b):
        return float(np.linalg.svd(np.linalg.qr(a)[0].T @ np.linalg.qr(b)[0], compute_uv=False).min())

    for i, n in enumerate(samples):
        scales = 1.0 / np.arange(1, rank + 1) ** 0.7
        feats = ((rng.standard_normal((n, rank)) * scales).astype(np.float32) @ basis
                 + 0.05 * rng.standard_normal((n, dim)).astype(np.float32) + 1.0)
        exact, t_gram = cpu_seconds(principal_axes, feats, k, "gram")
        randomized, t_rand = cpu_seconds(principal_axes, feats, k, "randomized")
        line = f"pca, {n} x {dim} -> {k}, CPU s: sample Gram {t_gram:.2f} / randomized {t_rand:.2f}"
        if i == 0:
            full = PCA(n_components=k, svd_solver="full").fit(feats.astype(np.float64)).components_.T
            line += (f"; subspace cosine to sklearn's full: sample Gram {largest_angle_cos(exact, full):.6f}, "
                     f"randomized {largest_angle_cos(randomized, full):.6f}")
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: OpenOOD's)")
    parser.add_argument("--batch", type=int, default=256, help="images in the Gram batch")
    parser.add_argument("--samples", type=int, nargs="+", default=[1000, 2048, 3000], help="PCA sample counts")
    args = parser.parse_args()
    profile_gram(args.width, args.batch)
    profile_pca(args.samples)


if __name__ == "__main__":
    main()
