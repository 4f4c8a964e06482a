#!/usr/bin/env bash
# NPOS on CIFAR-10: prepare the data, train NPOS (ResNet-18 32x32 + NPOS heads), test_ood with KNN on the
# L2-normalised penultimate features (postprocessor npos, K=300), then a leaderboard row next to OpenOOD
# v1.5's NPOS row (near 89.78 ± 0.33, far 94.07 ± 0.49 AUROC; configs/reference/openood_v1.5_cifar10.csv).
#
#   scripts/cifar10_train_npos.sh                                  # the paper: 500 epochs, lr 0.5, synthesis from 200 (GPU)
#   RECIPE=openood_v15 scripts/cifar10_train_npos.sh               # OpenOOD v1.5: 100 epochs, lr 0.1, from its 40th epoch (GPU)
#   WIDTH=16 EPOCHS=4 START=2 QUEUE=200 K=50 SELECT=40 KEEP=50 WORKERS=1 scripts/cifar10_train_npos.sh
#                                                                  # a short CPU run (~minutes/epoch at width 16)
#
# EPOCHS/START/QUEUE/K/SELECT/KEEP override trainer.epochs and trainer.outliers.{start_epoch, queue_size, K,
# select, keep}; empty = the recipe's value. Data: archives in $SHARED (default ../shared/data) when present.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE="${RECIPE:-paper}"          # paper | openood_v15
WIDTH="${WIDTH:-64}"
SEED="${SEED:-0}"
WORKERS="${WORKERS:-2}"
SHARED="${SHARED:-../shared/data}"
export OPENOOD_EXT_DATA="${OPENOOD_EXT_DATA:-data}"
PY="${PYTHON:-python}"

case "$RECIPE" in
  paper) CONFIGS=(configs/experiments/npos/train_npos_cifar10.yml); DEFAULT_EPOCHS=500 ;;
  openood_v15) CONFIGS=(configs/experiments/npos/train_npos_cifar10.yml configs/trainers/npos_openood_v15.yml); DEFAULT_EPOCHS=100 ;;
  *) echo "RECIPE must be paper or openood_v15, got '$RECIPE'" >&2; exit 2 ;;
esac
EPOCHS="${EPOCHS:-$DEFAULT_EPOCHS}"
OVR=(network.width="$WIDTH" seed="$SEED" num_workers="$WORKERS" trainer.epochs="$EPOCHS")
[[ -n "${START:-}" ]] && OVR+=(trainer.outliers.start_epoch="$START")
[[ -n "${QUEUE:-}" ]] && OVR+=(trainer.outliers.queue_size="$QUEUE")
[[ -n "${K:-}" ]] && OVR+=(trainer.outliers.K="$K")
[[ -n "${SELECT:-}" ]] && OVR+=(trainer.outliers.select="$SELECT")
[[ -n "${KEEP:-}" ]] && OVR+=(trainer.outliers.keep="$KEEP")

FROM=()
for archive in cifar10_train.tar cifar10_test.tar mnist_test.tar texture.tar; do
  if [[ -f "$SHARED/$archive" ]]; then FROM+=(--from "$SHARED/$archive"); fi
done

echo "== prepare (data root $OPENOOD_EXT_DATA)"
"$PY" -m openood_ext.cli data prepare cifar10 "${FROM[@]}"
"$PY" -m openood_ext.cli data status cifar10

TAG="cifar10_npos_${RECIPE}_w${WIDTH}_e${EPOCHS}_s${SEED}"
CKPT="checkpoints/${TAG}.pt"
echo "== train NPOS ($RECIPE), width $WIDTH, $EPOCHS epochs"
if [[ ! -f "$CKPT" ]]; then
  time "$PY" main.py --config "${CONFIGS[@]}" "${OVR[@]}" network.checkpoint="$CKPT" experiment="${TAG}_train"
fi

echo "== test_ood: KNN (npos, K=300) on normalised penultimate features"
time "$PY" main.py --config configs/experiments/npos/test_ood_npos_cifar10.yml "${CONFIGS[@]:1}" "${OVR[@]}" \
  network.checkpoint="$CKPT" experiment="${TAG}_test_ood"

echo "== leaderboard vs OpenOOD v1.5 (NPOS + KNN row)"
"$PY" -m openood_ext.cli leaderboard results --reference configs/reference/openood_v1.5_cifar10.csv \
  -o "results/leaderboard_${TAG}.csv"
