#!/usr/bin/env bash
# Reproduce the CIFAR-10 OOD run: prepare the data, train ResNet-18 (32x32), evaluate MSP / EBO / KNN.
#
#   scripts/cifar10_test_ood.sh                 # width 16, 8 epochs: what fits in ~30 CPU minutes
#   WIDTH=64 EPOCHS=100 scripts/cifar10_test_ood.sh   # OpenOOD v1.5's recipe (GPU)
#
# Data: the archives in $SHARED (default ../shared/data) when present, else downloads from the
# canonical sources (checksummed, resumable). OOD sets whose images are absent (CIFAR-100, Tiny-ImageNet,
# SVHN, Places365 when offline) are skipped and listed by test_ood; `openood-ext data status cifar10` says
# what is there. Data root: $OPENOOD_EXT_DATA (default ./data).
set -euo pipefail
cd "$(dirname "$0")/.."

WIDTH="${WIDTH:-16}"
EPOCHS="${EPOCHS:-8}"
SEED="${SEED:-0}"
WORKERS="${WORKERS:-1}"
SHARED="${SHARED:-../shared/data}"
export OPENOOD_EXT_DATA="${OPENOOD_EXT_DATA:-data}"
PY="${PYTHON:-python}"

FROM=()
for archive in cifar10_train.tar cifar10_test.tar mnist_test.tar texture.tar; do
  if [[ -f "$SHARED/$archive" ]]; then FROM+=(--from "$SHARED/$archive"); fi
done

echo "== prepare (data root $OPENOOD_EXT_DATA)"
time "$PY" -m openood_ext.cli data prepare cifar10 "${FROM[@]}"
"$PY" -m openood_ext.cli data status cifar10

echo "== train resnet18_32x32 width $WIDTH, $EPOCHS epochs"
CKPT="checkpoints/cifar10_resnet18_32x32_w${WIDTH}_e${EPOCHS}_s${SEED}.pt"
if [[ ! -f "$CKPT" ]]; then
  time "$PY" main.py --config configs/experiments/openood/train_cifar10.yml network.width="$WIDTH" \
    trainer.epochs="$EPOCHS" seed="$SEED" num_workers="$WORKERS" network.checkpoint="$CKPT" \
    experiment="cifar10_resnet18_32x32_w${WIDTH}_e${EPOCHS}_train_s${SEED}"
fi

echo "== test_ood: MSP, EBO, KNN"
time "$PY" main.py --config configs/experiments/openood/test_ood_cifar10.yml network.width="$WIDTH" seed="$SEED" \
  num_workers="$WORKERS" network.checkpoint="$CKPT" \
  experiment="cifar10_resnet18_32x32_w${WIDTH}_e${EPOCHS}_test_ood_s${SEED}"
