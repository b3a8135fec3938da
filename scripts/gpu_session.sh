#!/usr/bin/env bash
# The command of one device call (a lent GPU machine: Python 3.12 with JAX, no TensorFlow, no network).
# Prepare first with scripts/gpu_prepare.sh, then call the device tool with
#   command: bash scripts/gpu_session.sh 480        carry: [".gpu", ".whl"]        timeout_s: 590
# Extra arguments go to scripts/gpu_train.py (e.g. --arm faithful=faithful --arm recipe=cpu,train.batch_size=8).
# The files come back from $OUT; join them with `python scripts/gpu_import.py GPU_OUT MODELS_DIR`.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 3
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())" || exit 4
python3 scripts/gpu_train.py --well=.gpu/train_well.npz --out="${OUT:-/tmp/gpu_out}" --budget_s="${1:-480}" "${@:2}" 2>&1 \
  | grep -v "^[WI]0000"
