#!/usr/bin/env bash
# GPU acceptance: every path a CUDA user takes, in one command, with a pass/fail table and figures.
#
#   scripts/gpu_acceptance.sh                      # on a machine with one CUDA GPU and ../shared/data
#   OUT=gpu_acceptance SHARED=../shared/data scripts/gpu_acceptance.sh
#   GPU_ACCEPTANCE_DEVICE=cpu QUICK=1 scripts/gpu_acceptance.sh   # a rehearsal on the CPU (tiny sizes,
#                                                  # no fp16, gloo instead of nccl): catches typos only
#   ONLY='zoo|nccl' scripts/gpu_acceptance.sh       # only the steps whose name matches (a rerun)
#
# Steps (each under its own timeout, so one hang cannot eat the budget; about 8 minutes on an H100):
#   pytest_cuda     the CUDA test ids: pytest -m "not slow" -k cuda (engine, trainers, zoo, SD, syncs)
#   data            openood-ext data prepare cifar10 from the shared archives
#   zoo_digits      the whole zoo on digits in fp32/bf16/fp16: AUROCs within 0.1 point of fp32
#   cifar10_epoch   one epoch of OpenOOD's CIFAR-10 recipe (ResNet-18, bf16, channels_last): images/s
#   ceiling         the same network and step on random tensors already on the GPU; real/ceiling ratio
#   zoo_cifar10     the whole zoo on that CIFAR-10 network in fp32/bf16/fp16 (5000 images per split)
#   npos, vmdls     one epoch each on digits on CUDA
#   fcdd, eoe       one AD cell (class 0, one seed, one epoch) each on CIFAR-10 on CUDA (EOE with confetti
#                   outliers: its OE sets are not in ../shared/data)
#   oaml            OAML's tests with the tiny offline Stable Diffusion (generation, steps) and its CUDA step
#   bench_*         openood-ext bench forward / train / knn on CUDA
#   nccl            a single-process nccl group through openood_ext.distributed's collectives
# Everything goes under $OUT (default gpu_acceptance_<UTC time>); the last line is the summary.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python}"
DEVICE="${GPU_ACCEPTANCE_DEVICE:-cuda}"
QUICK="${QUICK:-0}"
SHARED="${SHARED:-../shared/data}"
OUT="${OUT:-gpu_acceptance_$(date -u +%Y%m%d_%H%M%S)}"

if [[ "$DEVICE" == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_acceptance: no CUDA device is present; nothing was run (GPU_ACCEPTANCE_DEVICE=cpu rehearses on the CPU)"
  exit 3
fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
REPO="$PWD"
SHARED="$(cd "$SHARED" 2>/dev/null && pwd || echo "$SHARED")"
export OPENOOD_EXT_DATA="$OUT/data" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$OUT"  # runs write results/, checkpoints/, cache/ here
PRECISIONS=(fp32 bf16 fp16)
if [[ "$DEVICE" != cuda ]]; then PRECISIONS=(fp32 bf16); fi  # fp16 autocast is CUDA-only
EPOCH_LIMIT="trainer.epochs=1"
DIGITS_EPOCHS="trainer.epochs=30"  # the main job's network (30 epochs: seconds on a GPU)
ZOO=()  # the whole zoo; a quick rehearsal tries a few methods of each route
if [[ "$QUICK" == 1 ]]; then LIMIT=200; WIDTH=8; STEPS=5; ZOO=(--only msp ebo mds knn gram odin)
  DIGITS_EPOCHS="trainer.epochs=2"; else
  LIMIT=5000; WIDTH=64; STEPS=50; fi
RESULTS="$OUT/results.tsv"
: > "$RESULTS"

# run_step NAME TIMEOUT_S FIGURE_REGEX COMMAND...: the command's output goes to $OUT/NAME.log; the last
# line matching FIGURE_REGEX is the step's figure in the table
run_step() {
  local name="$1" limit="$2" figure="$3"; shift 3
  if [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]]; then return 0; fi
  local log="$OUT/$name.log" t0=$SECONDS rc
  echo "== $name (timeout ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  local fig
  fig="$(grep -E "$figure" "$log" | tail -1 | cut -c1-150)"
  local status=PASS
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then status=TIMEOUT; elif [[ $rc -ne 0 ]]; then status=FAIL; fi
  printf '%s\t%s\t%ss\t%s\n' "$name" "$status" "$((SECONDS - t0))" "${fig:-(see $name.log)}" >> "$RESULTS"
  echo "   $status in $((SECONDS - t0)) s: ${fig:-}"
  [[ $status != PASS ]] && tail -5 "$log" | sed 's/^/   | /'
  return 0
}

CLI=("$PY" -m openood_ext.cli)
MAIN=("$PY" "$REPO/main.py")
CFG="$REPO/configs"
COMMON=(device="$DEVICE")

run_step env 60 "torch|cuda" "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"

run_step pytest_cuda 180 "passed|failed|skipped" bash -c "cd '$REPO' && '$PY' -m pytest -q -m 'not slow' -k cuda \
  -p no:cacheprovider tests/trainers tests/postprocessors tests/synthesizers tests/test_features.py"

FROM=()
for archive in cifar10_train.tar cifar10_test.tar mnist_test.tar texture.tar; do
  [[ -f "$SHARED/$archive" ]] && FROM+=(--from "$SHARED/$archive")
done
run_step data 150 "prepared|images|ready" "${CLI[@]}" data prepare cifar10 --no-download "${FROM[@]}"

# digits: train the main job's network (seconds), then the zoo under each precision
run_step digits_train 90 "epoch .*img/s" "${MAIN[@]}" --config "$CFG/pipelines/train.yml" "${COMMON[@]}" "$DIGITS_EPOCHS"
DIGITS_CKPT="$(ls "$OUT"/checkpoints/digits_cnn_s0.pt 2>/dev/null | head -1)"
run_step zoo_digits 150 "zoo precision" "$PY" "$REPO/scripts/gpu_zoo_precision.py" --checkpoint "${DIGITS_CKPT:-missing}" \
  --benchmark digits --device "$DEVICE" "${ZOO[@]}" --precisions "${PRECISIONS[@]}" --tolerance 0.1 --out "$OUT/zoo_digits.json"

# OpenOOD's CIFAR-10 recipe, one epoch, bf16 + channels_last, 8 loader workers: images/s against the ceiling
run_step cifar10_epoch 180 "epoch 1/1" "${MAIN[@]}" --config "$CFG/experiments/openood/train_cifar10.yml" \
  "${COMMON[@]}" network.width="$WIDTH" "$EPOCH_LIMIT" +trainer.precision=bf16 \
  +trainer.channels_last=true num_workers=8 +persistent_workers=true +prefetch_factor=4
REAL="$(grep -oE '[0-9.]+ img/s' "$OUT/cifar10_epoch.log" 2>/dev/null | tail -1 | cut -d' ' -f1)"
run_step ceiling 120 "ceiling" "${CLI[@]}" bench ceiling --network resnet18_32x32 --width "$WIDTH" --batch-size 128 \
  --steps "$STEPS" --precision bf16 --channels-last --device "$DEVICE" ${REAL:+--real-images-per-s "$REAL"} \
  --out "$OUT/ceiling.json"
CIFAR_CKPT="$(ls "$OUT"/checkpoints/cifar10_resnet18_32x32*.pt 2>/dev/null | head -1)"
run_step zoo_cifar10 240 "zoo precision" "$PY" "$REPO/scripts/gpu_zoo_precision.py" --checkpoint "${CIFAR_CKPT:-missing}" \
  --benchmark cifar10 --device "$DEVICE" "${ZOO[@]}" --precisions "${PRECISIONS[@]}" --limit "$LIMIT" --tolerance 0.1 \
  --out "$OUT/zoo_cifar10.json"

# the methods, one epoch each on the device
run_step npos 120 "epoch .*img/s" "${MAIN[@]}" --config "$CFG/experiments/npos/train_npos_digits.yml" \
  "${COMMON[@]}" "$EPOCH_LIMIT" trainer.outliers.start_epoch=0
run_step vmdls 120 "epoch .*img/s|AUROC" "${MAIN[@]}" --config "$CFG/experiments/vmdls/test_ood_vmdls_digits.yml" \
  "${COMMON[@]}" "$EPOCH_LIMIT"
run_step fcdd 150 "AUROC|auroc" "${MAIN[@]}" --config "$CFG/experiments/fcdd/ad_cifar10_fcdd.yml" \
  "${COMMON[@]}" "ad.classes=[0]" ad.seeds=1 ad.train_limit=2000 "$EPOCH_LIMIT"
run_step eoe 150 "AUROC|auroc" "${MAIN[@]}" --config "$CFG/experiments/eoe/ad_cifar10_eoe_bce.yml" \
  "${COMMON[@]}" "ad.classes=[0]" ad.seeds=1 ad.train_limit=2000 "$EPOCH_LIMIT" \
  "trainer.outliers={name: confetti}"  # EOE's OE sets (CIFAR-100, 80MTI) are not in ../shared/data
run_step oaml 150 "passed|failed" bash -c "cd '$REPO' && '$PY' -m pytest -q -p no:cacheprovider \
  tests/trainers/test_oaml.py tests/trainers/test_registered_trainers.py -k 'oaml and not cpu'"

# the benches on the device
run_step bench_forward 90 "images/s|img/s" "${CLI[@]}" bench forward --device "$DEVICE"
run_step bench_train 120 "ratio|images/s" "${CLI[@]}" bench train --device "$DEVICE"
run_step bench_knn 90 "faiss|torch|ms" "${CLI[@]}" bench knn --device "$DEVICE"

# a single-process process group through the toolkit's collectives
run_step nccl 60 "collectives" "$PY" "$REPO/scripts/gpu_collectives.py" --backend "$([[ $DEVICE == cuda ]] && echo nccl || echo gloo)"

echo
column -t -s $'\t' "$RESULTS" | tee "$OUT/summary.txt"
total=$(wc -l < "$RESULTS"); passed=$(grep -c $'\tPASS\t' "$RESULTS")
line="gpu_acceptance: $passed/$total steps passed on $DEVICE in $SECONDS s; details in $OUT"
echo "$line" | tee -a "$OUT/summary.txt"
[[ $passed -eq $total ]]
