#!/usr/bin/env bash
# OAML on CIFAR-10: check inputs -> generate (or reuse) Stable-Diffusion outliers -> fine-tune the ViT teacher
# if missing -> train OAML (student ResNet-18 32x32 from a cross-entropy checkpoint) -> test_ood (EBO T=1, MSP,
# KNN) -> leaderboard row. Paper settings by default (configs/trainers/oaml.yml; GPU, SD v1.4 weights).
#
#   SD_MODEL=/path/stable-diffusion-v1-4 ID_FEATURES=outliers/dream_ood_id_features_cifar10.pt \
#   TEACHER_INIT=/path/vit_base_patch16_224/pytorch_model.bin scripts/cifar10_train_oaml.sh
#   SMOKE=1 scripts/cifar10_train_oaml.sh     # CPU, ~minutes: tiny random SD (16 px, 3 steps, 8 batches of
#                                             # 2 images), anchor model, tiny ViT teacher, base and OAML 1 epoch
#                                             # each on ~300 CIFAR-10 training images
#
# Inputs (env): SD_MODEL (local diffusers dir or a hub id in the local HF cache), ID_FEATURES ([10, N, 768]
# features of Dream-OOD's anchor-aligned ID model; TRAIN_ANCHOR_MODEL=1 trains it here: anchors from the
# SD text encoder, configs/experiments/oaml/train_dream_anchor_cifar10.yml, first 500 features per class), TEACHER (fine-tuned teacher checkpoint; fine-tuned from
# TEACHER_INIT when missing), BASE (cross-entropy student checkpoint), EPOCHS, WIDTH, CLUB_UPDATE
# (alternate|joint), WORK (smoke work folder). Data: OPENOOD_EXT_DATA (default data/), prepared with
# `openood-ext data prepare cifar10`. Anything missing stops the script before any training.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export OPENOOD_EXT_DATA="${OPENOOD_EXT_DATA:-data}"
SMOKE="${SMOKE:-0}"
SEED="${SEED:-0}"
WIDTH="${WIDTH:-64}"
CLUB_UPDATE="${CLUB_UPDATE:-alternate}"
LISTS="$OPENOOD_EXT_DATA/benchmark_imglist/cifar10"
missing=()
[[ -f "$LISTS/train_cifar10.txt" && -d "$OPENOOD_EXT_DATA/images_classic/cifar10" ]] || \
  missing+=("CIFAR-10 data under $OPENOOD_EXT_DATA (run: openood-ext data prepare cifar10, or set OPENOOD_EXT_DATA)")

if [[ "$SMOKE" == 1 ]]; then
  WORK="${WORK:-results/oaml_smoke}"
  WIDTH="${WIDTH_SMOKE:-8}"; EPOCHS="${EPOCHS:-1}"
  TEACHER="$WORK/teacher_tiny.pt"; BASE="$WORK/base_w${WIDTH}.pt"; OUT_ROOT="$WORK/sd_tiny"
  SD_MODEL=tiny-random; ID_FEATURES="$WORK/id_features.pt"; ANCHOR_EPOCHS=1; PER_CLASS=20
  SD=(trainer.outliers.model=tiny-random trainer.outliers.id_features="$ID_FEATURES" trainer.outliers.root="$OUT_ROOT"
      trainer.outliers.K=5 trainer.outliers.select=4 trainer.outliers.candidates=20 trainer.outliers.keep=2
      trainer.outliers.repeats=2 trainer.outliers.batches=8 trainer.outliers.chunk=2
      trainer.outliers.steps=3 trainer.outliers.size=16 trainer.outliers.save_size=32)
  TINY=(model=vit_tiny_patch16_224 img_size=32 patch_size=8 embed_dim=32 depth=2 num_heads=2)
  TEACHER_NET=(); for kv in "${TINY[@]}"; do TEACHER_NET+=("network.$kv"); done
  TEACHER_TR=(); for kv in "${TINY[@]}"; do TEACHER_TR+=("trainer.teacher.$kv"); done
  EXTRA=(trainer.batch_size=16 batch_size=16 num_workers=0 benchmark.imglist_dir="[$WORK/imglist]")
  OAML_EXTRA=(trainer.club_hidden=64 "trainer.latent_mu_hidden=[128]" "trainer.latent_logvar_hidden=[64]")
  if [[ ${#missing[@]} == 0 ]]; then   # a few hundred images: every 160th training image, small test sets
    mkdir -p "$WORK/imglist"
    awk 'NR % 160 == 1' "$LISTS/train_cifar10.txt" > "$WORK/imglist/train_cifar10.txt"
    awk 'NR % 10 == 1' "$LISTS/val_cifar10.txt" > "$WORK/imglist/val_cifar10.txt"
    awk 'NR % 30 == 1' "$LISTS/test_cifar10.txt" > "$WORK/imglist/test_cifar10.txt"
    for s in mnist texture; do
      [[ -f "$LISTS/test_$s.txt" ]] && awk 'NR % 50 == 1' "$LISTS/test_$s.txt" > "$WORK/imglist/test_$s.txt"
    done
  fi
else
  EPOCHS="${EPOCHS:-500}"
  SD_MODEL="${SD_MODEL:-CompVis/stable-diffusion-v1-4}"
  ID_FEATURES="${ID_FEATURES:-outliers/dream_ood_id_features_cifar10.pt}"
  OUT_ROOT="${OUT_ROOT:-outliers/sd_v1.4_cifar10}"
  TEACHER="${TEACHER:-checkpoints/oaml_teacher_vit_b16_cifar10.pt}"
  BASE="${BASE:-checkpoints/cifar10_resnet18_32x32_w${WIDTH}_s${SEED}.pt}"
  SD=(trainer.outliers.model="$SD_MODEL" trainer.outliers.id_features="$ID_FEATURES" trainer.outliers.root="$OUT_ROOT")
  TEACHER_NET=(); TEACHER_TR=(); EXTRA=(); OAML_EXTRA=()
  if [[ ! -f "$OUT_ROOT/images.txt" ]]; then
    if [[ ! -d "$SD_MODEL" && ! -d "${HF_HOME:-$HOME/.cache/huggingface}/hub/models--${SD_MODEL//\//--}" ]]; then
      missing+=("SD model $SD_MODEL (set SD_MODEL to a local diffusers directory of stable-diffusion-v1-4)")
    fi
    [[ -f "$ID_FEATURES" || "${TRAIN_ANCHOR_MODEL:-0}" == 1 ]] || missing+=("ID features $ID_FEATURES (set ID_FEATURES to Dream-OOD's [10, N, 768] anchor-aligned features, or TRAIN_ANCHOR_MODEL=1 to train the anchor model here)")
  fi
  [[ -f "$TEACHER" || -f "${TEACHER_INIT:-/nonexistent}" ]] || \
    missing+=("teacher $TEACHER (or TEACHER_INIT=<local timm ViT-B/16 ImageNet weights> to fine-tune it)")
  [[ -f "$BASE" ]] || missing+=("base checkpoint $BASE (train it: python main.py --config configs/experiments/openood/train_cifar10.yml network.width=$WIDTH)")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "cifar10_train_oaml.sh: missing inputs, nothing was trained:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 2
fi

COMMON=(seed="$SEED" "${EXTRA[@]}")
if [[ "$SMOKE" == 1 && ! -f "$BASE" ]]; then
  echo "== smoke: cross-entropy student (width $WIDTH, 1 epoch)"
  "$PY" main.py --config configs/experiments/openood/train_cifar10.yml "${COMMON[@]}" network.width="$WIDTH" trainer.epochs=1 \
    network.checkpoint="$BASE" experiment=oaml_smoke_base overwrite=true
fi
if [[ ! -f "$TEACHER" ]]; then
  echo "== fine-tune the teacher -> $TEACHER"
  INIT=(); [[ -n "${TEACHER_INIT:-}" ]] && INIT=(network.pretrained_file="$TEACHER_INIT")
  TE=1; [[ "$SMOKE" != 1 ]] && TE="${TEACHER_EPOCHS:-10}"
  "$PY" main.py --config configs/experiments/oaml/train_oaml_teacher_cifar10.yml "${COMMON[@]}" "${TEACHER_NET[@]}" "${INIT[@]}" \
    trainer.epochs="$TE" network.checkpoint="$TEACHER" experiment="oaml_teacher_s${SEED}$([[ $SMOKE == 1 ]] && echo _smoke)" overwrite=true
fi

if [[ ! -f "$ID_FEATURES" && ! -f "$OUT_ROOT/text_outliers.pt" ]]; then
  ANCHORS="${ID_FEATURES%.pt}_anchors.pt"; ANCHOR_CKPT="${ID_FEATURES%.pt}_model.pt"
  echo "== Dream-OOD ID feature model: anchors -> $ANCHORS, model -> $ANCHOR_CKPT, features -> $ID_FEATURES"
  "$PY" -m openood_ext.pipelines.dream_features anchors --config configs/experiments/oaml/train_oaml_cifar10.yml \
    "${COMMON[@]}" "${SD[@]}" -o "$ANCHORS"
  AW=(network.anchors="$ANCHORS" network.width="$WIDTH" trainer.epochs="${ANCHOR_EPOCHS:-200}")
  [[ "$SMOKE" == 1 ]] && AW+=(trainer.batch_size=16)
  [[ -f "$ANCHOR_CKPT" ]] || "$PY" main.py --config configs/experiments/oaml/train_dream_anchor_cifar10.yml "${COMMON[@]}" \
    "${AW[@]}" network.checkpoint="$ANCHOR_CKPT" experiment="dream_anchor_s${SEED}$([[ $SMOKE == 1 ]] && echo _smoke)" overwrite=true
  "$PY" -m openood_ext.pipelines.dream_features features --config configs/experiments/oaml/train_dream_anchor_cifar10.yml \
    "${COMMON[@]}" "${AW[@]}" --checkpoint "$ANCHOR_CKPT" --per-class "${PER_CLASS:-500}" -o "$ID_FEATURES"
fi

TAG="cifar10_oaml_w${WIDTH}_e${EPOCHS}_${CLUB_UPDATE}_s${SEED}$([[ $SMOKE == 1 ]] && echo _smoke)"
CKPT="checkpoints/${TAG}.pt"
OAML=("${COMMON[@]}" "${OAML_EXTRA[@]}" "${SD[@]}" "${TEACHER_TR[@]}" network.width="$WIDTH" trainer.epochs="$EPOCHS"
      trainer.teacher.checkpoint="$TEACHER" trainer.student_init="$BASE" trainer.club_update="$CLUB_UPDATE"
      network.checkpoint="$CKPT")
echo "== OAML (outliers under $OUT_ROOT are generated at set-up if missing, then reused)"
time "$PY" main.py --config configs/experiments/oaml/train_oaml_cifar10.yml "${OAML[@]}" experiment="${TAG}_train" overwrite=true
echo "== test_ood: EBO (T=1), MSP, KNN"
time "$PY" main.py --config configs/experiments/oaml/test_ood_oaml_cifar10.yml "${OAML[@]}" experiment="${TAG}_test_ood" overwrite=true
echo "== leaderboard"
"$PY" -m openood_ext.cli leaderboard results -o "results/leaderboard_${TAG}.csv"
