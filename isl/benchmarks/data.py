"""`isl benchmark data`: pipeline throughput and the memory of converting one well.

Figures:

* `convert_peak_rss_mb`: peak resident memory of `isl convert` on the well,
  measured in a child process (TensorFlow's import included), against the
  32-64 GB of RAM the released PNG loader asked for (§3.5);
* `patches_per_second`: training patches delivered by `build_dataset`
  (crop, z mapping, flip, 2 x 2 patches, shuffle, batch, rotation, float
  conversion), median over repeats, after a warm-up;
* `patches_per_cpu_second`: the same patches divided by the CPU time this
  process used, which other processes on a shared machine do not change.
  Compare it with the model's CPU-seconds per training patch.

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
from isl import presets
from isl.benchmarks.options import BenchmarkOptions
from isl.data import schema

# Batch of the model-cost measurement (see `run`).
MODEL_BATCH = 2


def _convert_in_child(input_dir: str, output_dir: str, preset: str) -> tuple[float, float]:
    """Runs `isl convert` in a child process; returns (peak RSS MB, seconds)."""
    command = [
        sys.executable, "-m", "isl", "convert", f"--input_dir={input_dir}", f"--output_dir={output_dir}",
        "--num_shards=1", "--eval_every=0", f"--preset={preset}", "--noprogress",
    ]
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise errors.InputError(f"converting {input_dir} failed: {completed.stderr.strip().splitlines()[-1:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak_kb / 1024.0, seconds


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pipeline_rate(
    records_dir: str, config: config_lib.ExperimentConfig, batch_size: int, steps: int, repeats: int
) -> tuple[list[float], list[float]]:
    """(patches per wall-clock second, patches per CPU second of this process), per repeat."""
    from isl.data import pipeline

    dataset = pipeline.build_dataset(records_dir, config, split="train", seed=0, batch_size=batch_size)
    iterator = iter(dataset)
    for _ in range(3):  # Warm-up: tracing, autotuning, first reads.
        next(iterator)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        for _ in range(steps):
            inputs, _labels = next(iterator)
        patches = steps * int(inputs.shape[0])
        rates.append(patches / (time.perf_counter() - start))
        cpu_rates.append(patches / max(_cpu_seconds() - start_cpu, 1e-9))
    return rates, cpu_rates


def _model_cost(config: config_lib.ExperimentConfig, inputs: Any, labels: Any, steps: int) -> tuple[float, float]:
    """(patches per wall-clock second, patches per CPU second) of the model's training step.

    One warm-up step, then `steps` timed `train_on_batch` calls on a fixed batch
    (Adam, the paper's loss), so no input pipeline cost is included.
    """
    import keras

    from isl.model import builder
    from isl.model import losses

    geometry_input = int(inputs.shape[1])
    model = builder.build_model(config, input_size=geometry_input)
    model.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate), loss=losses.ISLLoss(config.channels))
    model.train_on_batch(inputs, labels)
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(steps):
        model.train_on_batch(inputs, labels)
    patches = steps * int(inputs.shape[0])
    return patches / (time.perf_counter() - start), patches / max(_cpu_seconds() - start_cpu, 1e-9)


def run(options: BenchmarkOptions) -> dict[str, Any]:
    """Runs the data benchmark; prints and returns the figures."""
    from isl.data import synthetic

    preset = options.preset
    config = presets.resolve_config(preset)
    batch_size = options.batch_size or config.train.batch_size
    steps = options.steps or 20
    repeats = max(1, options.repeats)
    source = options.data_dir or options.sample_dir
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
                size = options.image_size
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
        rates, cpu_rates = _pipeline_rate(records_dir, config, batch_size, steps, repeats)
        results["patches_per_second"] = round(statistics.median(rates), 1)
        results["patches_per_second_repeats"] = [round(rate, 1) for rate in rates]
        results["patches_per_cpu_second"] = round(statistics.median(cpu_rates), 1)
        results["cpu_count"] = os.cpu_count()
        results["load_average_1min"] = round(os.getloadavg()[0], 2)
        print(
            f"training pipeline ({preset}, batch {batch_size}): {results['patches_per_second']:.1f} patches/s "
            f"(median of {repeats} x {steps} batches; repeats {results['patches_per_second_repeats']}) "
            f"on {os.cpu_count()} CPU(s), load average {results['load_average_1min']}; "
            f"{results['patches_per_cpu_second']:.1f} patches per CPU-second (robust to other load)",
            flush=True,
        )
        model_steps = options.model_steps
        if model_steps:
            from isl.data import pipeline

            # A small batch keeps the paper model's activations within memory (batch 16 in
            # float32 needs well over 10 GB); the cost per patch hardly depends on the batch.
            model_batch = min(batch_size, MODEL_BATCH)
            batch = next(iter(pipeline.build_dataset(records_dir, config, seed=0, batch_size=model_batch)))
            model_rate, model_cpu_rate = _model_cost(config, batch[0], batch[1], model_steps)
            results["model_batch_size"] = model_batch
            results["model_train_patches_per_second"] = round(model_rate, 2)
            results["model_train_patches_per_cpu_second"] = round(model_cpu_rate, 2)
    if "model_train_patches_per_cpu_second" in results:
        ratio = results["patches_per_cpu_second"] / max(results["model_train_patches_per_cpu_second"], 1e-9)
        results["pipeline_to_model_ratio"] = round(ratio, 1)
        print(
            f"{preset} model training step (batch {results['model_batch_size']}, float32 unless "
            "train.mixed_precision): "
            f"{results['model_train_patches_per_second']:.2f} patches/s, "
            f"{results['model_train_patches_per_cpu_second']:.2f} patches per CPU-second; the pipeline delivers "
            f"{ratio:.1f}x the patches the model consumes per CPU-second (target >= 10x)"
        )
    print(f"data: {results['data']}")
    return results
