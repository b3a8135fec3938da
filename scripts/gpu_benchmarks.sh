#!/usr/bin/env bash
# The prediction and model benchmarks in float32 and mixed precision (bfloat16), for a GPU machine.
#
# Run from anywhere on a machine with this repository, a Python with TensorFlow (GPU build) and the
# package's requirements (`pip install -e .`); it needs no network. Training on a GPU is `isl train` itself
# (docs/USAGE.md, "isl train": "On a GPU"). Writes one JSON file per benchmark
# and precision, plus the device list and the full logs, into $ISL_GPU_OUT (default /tmp/isl-gpu-benchmarks):
#
#   predict_float32.json, predict_bfloat16.json   `isl benchmark predict`: old plan vs new plan on a
#                                                 1024 x 1024 13-z well (the sample plus its mirror image)
#   model.json                                    `isl benchmark model`: forward and training step,
#                                                 float32 and bfloat16
#
# Settings (environment): ISL_GPU_MODEL_DIR (default checkpoints/condition_b_sample; empty: the preset,
# random weights), ISL_GPU_SAMPLE_DIR (default ../shared/data/condition_b_sample; synthetic pixels when
# absent), ISL_GPU_PRESET (paper), ISL_GPU_IMAGE_SIZE (1024), ISL_GPU_REPEATS (2), ISL_GPU_PLANS (old,new),
# ISL_GPU_BATCH_SIZE (the preset's). The test (tests/benchmarks/test_gpu_script.py) runs it on the CPU
# with the tiny preset and a 48-px image.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${ISL_GPU_OUT:-/tmp/isl-gpu-benchmarks}
MODEL_DIR=${ISL_GPU_MODEL_DIR-checkpoints/condition_b_sample}
SAMPLE_DIR=${ISL_GPU_SAMPLE_DIR-../shared/data/condition_b_sample}
PRESET=${ISL_GPU_PRESET:-paper}
SIZE=${ISL_GPU_IMAGE_SIZE:-1024}
REPEATS=${ISL_GPU_REPEATS:-2}
PLANS=${ISL_GPU_PLANS:-old,new}
mkdir -p "$OUT"

"$PYTHON" -c "import tensorflow as tf; print('TensorFlow', tf.__version__, 'GPUs:', tf.config.list_physical_devices('GPU'))" \
  | tee "$OUT/devices.txt"

source_flags=()
if [[ -n "$MODEL_DIR" ]]; then source_flags+=("--model_dir=$MODEL_DIR"); else source_flags+=("--preset=$PRESET"); fi
if [[ -n "$SAMPLE_DIR" && -d "$SAMPLE_DIR" ]]; then source_flags+=("--sample_dir=$SAMPLE_DIR"); fi

for precision in float32 bfloat16; do
  echo "== isl benchmark predict, $precision"
  "$PYTHON" -m isl benchmark predict "${source_flags[@]}" --precision="$precision" --image_size="$SIZE" \
    --repeats="$REPEATS" --plans="$PLANS" --json 2>"$OUT/predict_$precision.log" | tee "$OUT/predict_$precision.txt"
  tail -n 1 "$OUT/predict_$precision.txt" > "$OUT/predict_$precision.json"
done

echo "== isl benchmark model, float32 and bfloat16"
batch_flags=()
if [[ -n "${ISL_GPU_BATCH_SIZE:-}" ]]; then batch_flags+=("--batch_size=$ISL_GPU_BATCH_SIZE"); fi
ISL_BENCHMARK_MODEL_VARIANTS=float32,bfloat16 "$PYTHON" -m isl benchmark model --preset="$PRESET" \
  --repeats="$REPEATS" "${batch_flags[@]}" --json 2>"$OUT/model.log" | tee "$OUT/model.txt"
tail -n 1 "$OUT/model.txt" > "$OUT/model.json"
echo "Figures written to $OUT"
