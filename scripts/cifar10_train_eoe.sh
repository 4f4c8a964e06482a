#!/usr/bin/env bash
# EOE one-vs-rest on CIFAR-10 (Liznerski et al., TMLR 2022, "Exposing Outlier Exposure"), the paper's settings
# by default: EOE's CNN32 (bias), Adam lr 1e-3 / no weight decay, batch 128 normals + 128 OE images,
# 200 epochs with x0.1 at 100 and 150, EOE's augmentation (jitter 0.01, flip, crop pad 4, +0.001 noise) and
# normalisation with the normal class's statistics (OE and test images included), all 10 classes.
#
# Usage: scripts/cifar10_train_eoe.sh [OBJECTIVE] [overrides...]
#   OBJECTIVE: hsc (default), bce, focal, dsad, dsvdd (dsvdd trains without OE)
#   OE_LIMITS="1 2 4 8 16 all"  run the OE-limit sweep (ad_sweep; sweep.csv + plots/sweep_auroc.png) instead
#                               of one protocol with the full OE pool
#
# OE set: EOE uses 80 Million Tiny Images, which is not available; the configs use the 1,200 DTD Textures
# images prepared with the cifar10 benchmark (disjoint from CIFAR-10; the anomalies are the other CIFAR-10
# classes). Another pool: trainer.outliers.imglist=LIST trainer.outliers.image_dir=DIR (or .folder=DIR).
#
# Data:  openood-ext data prepare cifar10 --from ../shared/data/cifar10_train.tar \
#            --from ../shared/data/cifar10_test.tar --from ../shared/data/texture.tar
#
# Reduced-scale CPU run (what README's EOE row and docs/methods/eoe.md report: 3 classes, 2 seeds, 500 normals,
# 5 epochs, OE limits 1 / 8 / all; about 5 CPU-minutes per objective), its own config:
#   python main.py --config configs/experiments/eoe/ad_cifar10_eoe_oe_limits_cpu.yml
# A killed run continues at the first unfinished cell with: ... resume=true
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENOOD_EXT_DATA="${OPENOOD_EXT_DATA:-data}"
objective="hsc"
case "${1:-}" in
  hsc|bce|focal|dsad|dsvdd) objective="$1"; shift ;;
esac
if [ "$objective" != "dsvdd" ] && [ ! -f "$OPENOOD_EXT_DATA/benchmark_imglist/cifar10/test_texture.txt" ]; then
  echo "OE pool missing: prepare cifar10 (with texture.tar) under $OPENOOD_EXT_DATA, or override trainer.outliers" >&2
  exit 2
fi
if [ -n "${OE_LIMITS:-}" ]; then
  if [ "$objective" = "dsvdd" ]; then
    echo "OE_LIMITS: dsvdd trains without OE images; pick hsc, bce, focal or dsad" >&2
    exit 2
  fi
  clf=false
  case "$objective" in bce|focal) clf=true ;; esac
  limits="[$(echo $OE_LIMITS | tr ' ' ',')]"
  exec python main.py --config configs/experiments/eoe/ad_cifar10_eoe_oe_limits.yml trainer.name="eoe_$objective" \
      network.clf=$clf "ad_sweep.oe_limits=$limits" experiment="cifar10_eoe_${objective}_oe_limits" "$@"
fi
exec python main.py --config "configs/experiments/eoe/ad_cifar10_eoe_$objective.yml" "$@"
