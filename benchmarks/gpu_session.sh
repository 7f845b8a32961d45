#!/usr/bin/env bash
# Every check issue 17 needs a CUDA machine for, in one command (~10 minutes on one H100/H200):
#   bash benchmarks/gpu_session.sh [OUT_DIR]
# 1. the GPU tests (device augmentation on CUDA, bf16 forward/backward);
# 2. device augmentation images/s at 224 px (benchmarks/device_augment.py);
# 3. training fed by the pipeline against batches already on the device, 64 and 224 px, CPUs swept
#    (benchmarks/gpu_feeding.py);
# 4. a real `mmpipe train` on CUDA (bf16 autocast, pinned prefetch, augment.backend=device, train.compile) and
#    `mmpipe predict --gpu` with its model.
# Each step's output goes to OUT_DIR/<step>.txt; a failed step is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu-session}}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"  # absolute: job files resolve relative paths against their folder
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU: nothing to check here'" || exit 2
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
status=0
step() {  # step NAME COMMAND...: run, keep the output, note the exit code
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - start)) s (tail of $OUT/$name.txt:)"; tail -n 8 "$OUT/$name.txt" | sed 's/^/   | /'
  [ $rc -eq 0 ] || status=1
}
step gpu-tests python -m pytest -q -p no:cacheprovider tests/model/test_device_augment.py tests/train/test_train.py \
  -k "cuda or gpu" -rs
step device-augment python benchmarks/device_augment.py
step gpu-feeding python benchmarks/gpu_feeding.py
DATA="$OUT/demo-data"
step demo-data mmpipe demo-data "$DATA" --scale 1 --overwrite
# train -> evaluate -> register (jobs/train.yaml) on the GPU, so predict has a registered model
step train-cuda mmpipe run jobs/train.yaml --set "data.splits.train=$DATA/train/*.tar" \
  --set "data.splits.val=$DATA/val/*.tar" --set "data.splits.test=$DATA/test/*.tar" \
  --set "workflow.run_dir=$OUT/workflow" --set "registry.uri=$OUT/registry" --set scaling.use_gpu=true --set scaling.num_workers=1 --set train.epochs=3 \
  --set augment.backend=device --set 'augment.image=[{name: HorizontalFlip}, {name: RandomResizedCrop}, {name: ColorJitter}]' \
  --set 'augment.audio=[{name: Gain}, {name: AddGaussianNoise}]' --set 'augment.text=[{name: TokenDropout}]'
step train-cuda-compile mmpipe train "$DATA/spec.yaml" --out "$OUT/run-cuda-compile" --fresh \
  --set scaling.use_gpu=true --set scaling.num_workers=1 --set train.epochs=2 --set train.compile=true
step predict-gpu mmpipe predict "$DATA/test/*.tar" --model "$OUT/registry@champion" --out "$OUT/predictions.parquet" \
  --gpu
echo "outputs in $OUT; status $status"
exit $status
