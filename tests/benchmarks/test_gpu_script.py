"""The prepared GPU benchmark script runs end to end (on the CPU, tiny settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_benchmark_script_runs_with_tiny_settings(tmp_path):
    environment = dict(
        os.environ,
        PYTHON=sys.executable,
        PYTHONPATH=ROOT,
        ISL_GPU_OUT=str(tmp_path),
        ISL_GPU_MODEL_DIR="",
        ISL_GPU_SAMPLE_DIR="",
        ISL_GPU_PRESET="tiny",
        ISL_GPU_IMAGE_SIZE="48",
        ISL_GPU_REPEATS="1",
        ISL_GPU_BATCH_SIZE="2",
    )
    completed = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "gpu_benchmarks.sh")], env=environment, capture_output=True, text=True,
        timeout=1800,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    for precision in ("float32", "bfloat16"):
        figures = json.load(open(tmp_path / f"predict_{precision}.json"))
        assert set(figures["plans"]) == {"old", "new"}
        assert figures["plans"]["new"]["seconds"] > 0 and "speedup_vs_old" in figures["plans"]["new"]
    model = json.load(open(tmp_path / "model.json"))
    assert {"float32", "bfloat16"} <= set(model)
