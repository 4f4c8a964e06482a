#!/usr/bin/env bash
# EOE's evolutionary search for the single best OE image on CIFAR-10 (Liznerski et al., TMLR 2022,
# liznerski/eoe src/eoe/main/evolve_oe_cifar.py), the paper's settings by default: normal class 0, HSC,
# population 64, 50 generations, tournament 3, mating 0.05, mutation 0.55 (one of the 50 nearest of 10,000
# random candidates beyond squared L2 100); fitness = mean test AUROC over 2 seeds of a 30-epoch training
# (Adam 1e-3, x0.1 at 25, batch 128, no augmentation). That is up to 64 x 50 x 2 trainings: a GPU job.
#
# FITNESS IS MEASURED ON THE TEST SPLIT: AN ORACLE ANALYSIS (as in the paper), not model selection.
#
# Candidate pool: EOE searches 80 Million Tiny Images, which is not available here; the default is the 1,200
# DTD Textures images prepared with the cifar10 benchmark (colour, disjoint from CIFAR-10). Another pool:
#   oe_search.candidates.imglist=LIST oe_search.candidates.image_dir=DIR   (or oe_search.candidates={folder: DIR})
#
# Data:  openood-ext data prepare cifar10 --from ../shared/data/cifar10_train.tar --from .../cifar10_test.tar \
#            --from ../shared/data/texture.tar        (CIFAR-10 + the Textures pool)
#
# Extra arguments are config overrides, e.g. the worst images: oe_search.minimize=true experiment=..._worst;
# random search: oe_search.mode=random oe_search.samples=2000. A short CPU plumbing run (what the README reports):
#   nice -n 10 scripts/cifar10_evolve_oe.sh oe_search.population=6 oe_search.generations=2 \
#       oe_search.mutation_pool=1200 trainer.epochs=2 'trainer.scheduler.milestones=[1]' \
#       ad.train_limit=500 ad.test_limit=2000 experiment=cifar10_oe_search_cpu
# A killed search continues from its last finished generation with: openood-ext run --resume results/<experiment>
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENOOD_EXT_DATA="${OPENOOD_EXT_DATA:-data}"
for f in benchmark_imglist/cifar10/train_cifar10.txt benchmark_imglist/cifar10/test_texture.txt; do
  if [ ! -f "$OPENOOD_EXT_DATA/$f" ]; then
    echo "missing $OPENOOD_EXT_DATA/$f: prepare cifar10 (with the texture archive) under $OPENOOD_EXT_DATA" >&2
    exit 2
  fi
done
echo "OE candidate pool: DTD Textures ($OPENOOD_EXT_DATA/benchmark_imglist/cifar10/test_texture.txt); EOE's 80MTI is not available"
echo "fitness = test AUROC: an oracle analysis, as in the paper"
exec python main.py --config configs/experiments/eoe/oe_search_cifar10.yml "$@"
