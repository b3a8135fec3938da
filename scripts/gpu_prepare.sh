#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what a lent GPU machine needs for scripts/gpu_session.sh:
#   .gpu/train_well.npz  the training split packed by scripts/gpu_pack.py (default records: /work/runs/records)
#   .whl/                keras, namex and optree wheels for the device's Python 3.12 (it has JAX, no network)
# Both folders are listed in .git/info/exclude (never committed) and travel with the device call's `carry`.
# Usage: bash scripts/gpu_prepare.sh [RECORDS_DIR]     (RECORDS_DIR: an `isl convert` output folder)
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-/work/runs/records}
for folder in /.gpu/ /.whl/; do
  grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >> .git/info/exclude
done
rm -rf .whl  # one version of each wheel: two stop the install on the device
mkdir -p .gpu .whl
python scripts/gpu_pack.py "$RECORDS" .gpu/train_well.npz
KERAS_VERSION=$(python -c "import keras; print(keras.__version__)")
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "keras==$KERAS_VERSION" namex optree
du -sh .gpu .whl
