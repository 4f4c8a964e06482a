#!/usr/bin/env bash
# Compare training objectives on the embedded digits benchmark with the same network and epochs:
# base (cross-entropy) vs oe vs energy_oe vs logitnorm; outliers for oe/energy_oe come from the digits OE
# set (benchmark.oe: 300 patches disjoint from every test and validation OOD set). Each trained network is
# evaluated with MSP, EBO and KNN; the leaderboard lands in results/digits_trainers.md.
#   SEED=1 EPOCHS=30 bash scripts/digits_compare_trainers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
EPOCHS=${EPOCHS:-30}
OUT=${OUT:-results/digits_trainers}
for method in base oe energy_oe logitnorm; do
  start=$(date +%s)
  python main.py --config configs/pipelines/test_ood.yml "configs/trainers/${method}_digits.yml" \
    seed="$SEED" trainer.epochs="$EPOCHS" output_dir="$OUT" experiment="digits_${method}_s${SEED}" \
    network.checkpoint="checkpoints/digits_${method}_e${EPOCHS}_s${SEED}.pt" \
    "postprocessors=[msp,ebo,{name: knn, k: 10}]"
  echo "== ${method}: $(( $(date +%s) - start )) s wall (training + evaluation)"
done
openood-ext leaderboard "$OUT" -o "$OUT.md"
cat "$OUT.md"
