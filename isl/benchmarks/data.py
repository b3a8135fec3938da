"""`isl benchmark data`: pipeline throughput and the memory of converting one well.

Figures:

* `convert_peak_rss_mb`: peak resident memory of `isl convert` on the well,
  measured in a child process (TensorFlow's import included), against the
  32-64 GB of RAM the released PNG loader asked for (§3.5);
* `patches_per_second`: training patches delivered by `build_dataset`
  (crop, z mapping, flip, 2 x 2 patches, shuffle, batch, rotation, float
  conversion), median over repeats, after a warm-up.

The data is --data_dir (an image folder is converted first; a converted
folder is used as is), else --sample_dir, else one synthetic well the size
of the real sample (1024 x 768, 13 z slices, 3 labels).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from isl import config as config_lib
from isl import errors
from isl.data import schema


def _convert_in_child(input_dir: str, output_dir: str, preset: str) -> tuple[float, float]:
    """Runs `isl convert` in a child process; returns (peak RSS MB, seconds)."""
    command = [
        sys.executable, "-m", "isl", "convert", f"--input_dir={input_dir}", f"--output_dir={output_dir}",
        "--num_shards=1", "--eval_every=0", f"--preset={preset}", "--noprogress",
    ]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise errors.InputError(f"converting {input_dir} failed: {completed.stderr.strip().splitlines()[-1:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak_kb / 1024.0, seconds


def _pipeline_rate(records_dir: str, config: config_lib.ExperimentConfig, batch_size: int, steps: int, repeats: int) -> list[float]:
    from isl.data import pipeline

    dataset = pipeline.build_dataset(records_dir, config, split="train", seed=0, batch_size=batch_size)
    iterator = iter(dataset)
    for _ in range(3):  # Warm-up: tracing, autotuning, first reads.
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            inputs, _labels = next(iterator)
        rates.append(steps * int(inputs.shape[0]) / (time.perf_counter() - start))
    return rates


def run(flag_values: Any) -> dict[str, Any]:
    """Runs the data benchmark with the `isl benchmark` flags; prints and returns the figures."""
    from isl.data import synthetic

    preset = flag_values["preset"].value
    config = config_lib.resolve_config(preset)
    batch_size = flag_values["batch_size"].value or config.train.batch_size
    steps = flag_values["steps"].value or 20
    repeats = max(1, flag_values["repeats"].value)
    source = flag_values["data_dir"].value or flag_values["sample_dir"].value
    results: dict[str, Any] = {"preset": preset, "batch_size": batch_size, "steps": steps, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="isl-benchmark-data-") as scratch:
        if source and os.path.isfile(os.path.join(source, schema.DATASET_JSON)):
            records_dir = source
            results["data"] = f"converted dataset {os.path.abspath(source)}"
        else:
            if source:
                image_dir = source
                results["data"] = f"image folder {os.path.abspath(source)}"
            else:
                size = flag_values["image_size"].value
                shape = (size, size) if size else (1024, 768)
                image_dir = os.path.join(scratch, "raw")
                synthetic.write_synthetic_dataset(image_dir, num_wells=1, size=shape, num_z=13, seed=0)
                results["data"] = f"synthetic well {shape[0]}x{shape[1]}, 13 z + 3 labels"
            records_dir = os.path.join(scratch, "records")
            peak_mb, seconds = _convert_in_child(image_dir, records_dir, preset)
            results["convert_peak_rss_mb"] = round(peak_mb, 1)
            results["convert_seconds"] = round(seconds, 2)
            print(f"convert: peak RSS {peak_mb:.0f} MB (limit 2048 MB; the released loader asked for 32-64 GB), "
                  f"{seconds:.1f}s including TensorFlow start-up")
        rates = _pipeline_rate(records_dir, config, batch_size, steps, repeats)
    results["patches_per_second"] = round(statistics.median(rates), 1)
    results["patches_per_second_repeats"] = [round(rate, 1) for rate in rates]
    results["cpu_count"] = os.cpu_count()
    print(
        f"training pipeline ({preset}, batch {batch_size}): {results['patches_per_second']:.1f} patches/s "
        f"(median of {repeats} x {steps} batches; repeats {results['patches_per_second_repeats']}) "
        f"on {os.cpu_count()} CPU(s)"
    )
    print(f"data: {results['data']}")
    return results
