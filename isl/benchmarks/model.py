"""`isl benchmark model`: forward and training-step speed and memory of the network.

Times a batch of the preset's training patches (16 x 250 x 250 x 26 for the
paper) in several variants, each in its own fresh process (so each has its
own peak RSS and its own one-off costs):

* `float32`: the faithful default;
* `bfloat16`: `train.mixed_precision=bfloat16` (bfloat16 compute, float32
  variables and logits);
* `float32_fused`, `bfloat16_fused`: `train.fused_elementwise=true` (dual
  activation, unit concat and residual pad-and-add as XLA-fused functions);
* `float32_fast`, `bfloat16_fast` (default): both speed options,
  `train.fused_elementwise=true` and `train.fast_batch_norm=true` (batch norm
  of depths oneDNN has no vectorised kernel for on TF's Eigen kernel);
* optionally `float32_xla`, `bfloat16_xla` (`train.jit_compile=true`, the
  whole step XLA-compiled; minutes of compilation, see BUILD_NOTES.md).

For each: forward (inference-mode batch norm) and one training step
(forward, loss, backward, Adam update; training-mode batch norm, the
faithful step of the paper). Achieved FLOP/s count the convolution FLOPs
(`isl describe`, 2 x MACs, core and heads); a training step is counted as
3 x the forward FLOPs, reported as a fraction of a 4096^2 matmul peak
measured in the same process. Each timing is the median of `--repeats` runs
after one warm-up run (whose time, mostly graph construction, oneDNN kernel
selection and XLA compilation, is reported separately). CPU seconds (user +
system of the process) are reported beside wall seconds: on a shared machine
they vary much less than wall time.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import resource
import statistics
import time
from typing import Any

from isl import progress as progress_lib
from isl.benchmarks.options import BenchmarkOptions

MATMUL_SIZE = 4096

# name -> (mixed_precision, fused_elementwise, fast_batch_norm, jit_compile)
VARIANTS: dict[str, tuple[str, bool, bool, bool]] = {
    "float32": ("", False, False, False),
    "bfloat16": ("bfloat16", False, False, False),
    "float32_fused": ("", True, False, False),
    "bfloat16_fused": ("bfloat16", True, False, False),
    "float32_fast": ("", True, True, False),
    "bfloat16_fast": ("bfloat16", True, True, False),
    "float32_xla": ("", False, False, True),
    "bfloat16_xla": ("bfloat16", False, False, True),
}
DEFAULT_VARIANTS = ("float32", "bfloat16", "float32_fast", "bfloat16_fast")


def _timed(function, repeats: int) -> dict[str, Any]:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "seconds": statistics.median(walls),
        "all_seconds": walls,
        "cpu_seconds": statistics.median(cpus),
        "all_cpu_seconds": cpus,
    }


def matmul_peak(dtype: str, repeats: int = 5) -> float:
    """FLOP/s of a 4096^2 matmul in `dtype` ("float32" or "bfloat16"), median."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((MATMUL_SIZE, MATMUL_SIZE)), dtype)
    b = tf.cast(tf.random.normal((MATMUL_SIZE, MATMUL_SIZE)), dtype)
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul().numpy()
    return 2 * MATMUL_SIZE**3 / _timed(lambda: matmul().numpy(), repeats)["seconds"]


def benchmark_config(config: Any, batch_size: int, repeats: int, log=print) -> dict[str, Any]:
    """Times forward and training step of `config`'s model; returns figures."""
    import keras
    import numpy as np
    import tensorflow as tf

    from isl.model import builder
    from isl.model import geometry
    from isl.model import losses
    from isl.model import summary as summary_lib

    geo = geometry.geometry(config.model)
    flops_per_patch = summary_lib.summarize(config, geo.input_size)["flops_per_patch"]["total"]
    model = builder.build_model(config, input_size=geo.input_size)
    loss = losses.ISLLoss(config.channels)
    optimizer = keras.optimizers.Adam(config.train.learning_rate)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    inputs = tf.constant(
        rng.random((batch_size, geo.input_size, geo.input_size, config.channels.num_input_features), dtype=np.float32)
    )
    labels = rng.random((batch_size, geo.output_size, geo.output_size, config.channels.num_heads, 2), dtype=np.float32)
    labels[..., 1] = 1.0
    labels = tf.constant(labels)
    jit_compile = bool(getattr(config.train, "jit_compile", False))

    @tf.function(jit_compile=jit_compile)
    def forward():
        return model(inputs, training=False)

    @tf.function(jit_compile=jit_compile)
    def train_step():
        with tf.GradientTape() as tape:
            value = loss(labels, model(inputs, training=True))
        gradients = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return value

    result: dict[str, Any] = {}
    for name, function, flops in (
        ("forward", forward, batch_size * flops_per_patch),
        ("train_step", train_step, 3 * batch_size * flops_per_patch),
    ):
        start = time.perf_counter()
        np.asarray(function())
        warmup = time.perf_counter() - start
        figures = _timed(lambda f=function: np.asarray(f()), repeats)
        figures.update(first_call_seconds=warmup, flops=flops, flops_per_second=flops / figures["seconds"])
        result[name] = figures
        log(f"  {name}: median {figures['seconds']:.2f} s over {repeats} "
            f"({', '.join(f'{t:.2f}' for t in figures['all_seconds'])}), {figures['cpu_seconds']:.2f} CPU-s; "
            f"first call {warmup:.1f} s; {flops / figures['seconds'] / 1e9:.0f} GFLOP/s")
    return result


def _variant_worker(config: Any, variant: str, batch_size: int, repeats: int, queue: Any) -> None:
    """Runs one variant in a fresh process and puts its figures on `queue`."""
    try:
        precision, fused, fast_batch_norm, jit_compile = VARIANTS[variant]
        config = dataclasses.replace(
            config,
            train=dataclasses.replace(
                config.train,
                mixed_precision=precision,
                fused_elementwise=fused,
                fast_batch_norm=fast_batch_norm,
                jit_compile=jit_compile,
            ),
        )
        peak = matmul_peak("bfloat16" if precision else "float32")
        figures = benchmark_config(config, batch_size, repeats, log=lambda line: print(f"{variant}:{line}", flush=True))
        for name in ("forward", "train_step"):
            figures[name]["fraction_of_matmul_peak"] = figures[name]["flops_per_second"] / peak
        figures["matmul_peak_flops_per_second"] = peak
        figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        queue.put(figures)
    except BaseException as error:  # Reported by the parent.
        queue.put({"error": f"{type(error).__name__}: {error}"})


def run_variant(config: Any, variant: str, batch_size: int, repeats: int) -> dict[str, Any]:
    """Figures of one variant, measured in a spawned process."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_variant_worker, args=(config, variant, batch_size, repeats, queue))
    from isl import quiet

    with quiet.stderr_silenced():  # The child's TensorFlow start-up; its errors come back through the queue.
        process.start()
    figures = queue.get()
    process.join()
    return figures


OUTPUT_SIZE_VARIANTS = ("float32", "bfloat16_fast")


def output_size_table(
    config: Any, output_sizes: list[int], memory_budget_bytes: float, repeats: int, log=print
) -> list[dict[str, Any]]:
    """Training throughput of `config`'s network at several output sizes.

    For each output size (8 + 16k) and each of `OUTPUT_SIZE_VARIANTS`, the
    batch is the largest (at most the config's) whose modelled step
    (`isl.model.footprint`) fits `memory_budget_bytes`; one fresh process
    per row measures the training step. A row reports labelled output
    pixels (batch x output^2) per second and per CPU-second.

    Raises:
        InputError: for an output size the network cannot produce.
    """
    from isl import errors
    from isl.model import footprint
    from isl.model import geometry

    rows = []
    for output_size in output_sizes:
        sized = dataclasses.replace(config, model=dataclasses.replace(config.model, output_size=output_size))
        try:
            geo = geometry.geometry(sized.model)
        except ValueError as error:
            raise errors.InputError(f"--output_sizes: {error}") from None
        for variant in OUTPUT_SIZE_VARIANTS:
            precision = VARIANTS[variant][0]
            variant_config = dataclasses.replace(
                sized, train=dataclasses.replace(sized.train, mixed_precision=precision)
            )
            batch = footprint.largest_batch(variant_config, memory_budget_bytes)
            row: dict[str, Any] = {"output_size": output_size, "input_size": geo.input_size, "variant": variant,
                                   "batch_size": batch}
            if batch == 0:
                row["error"] = "no batch fits the memory budget"
                log(f"output {output_size} {variant}: no batch fits {memory_budget_bytes / 1e9:.0f} GB")
                rows.append(row)
                continue
            figures = run_variant(sized, variant, batch, repeats)
            if "error" in figures:
                row["error"] = figures["error"]
            else:
                step = figures["train_step"]
                pixels = batch * output_size**2
                row.update(
                    step_seconds=step["seconds"],
                    step_cpu_seconds=step["cpu_seconds"],
                    labelled_pixels_per_second=pixels / step["seconds"],
                    labelled_pixels_per_cpu_second=pixels / step["cpu_seconds"],
                    peak_rss_gb=figures["peak_rss_bytes"] / 2**30,
                    modelled_gb=footprint.training_step_bytes(variant_config, batch) / 2**30,
                )
            rows.append(row)
            if "error" in row:
                log(f"output {output_size} {variant} batch {batch}: failed: {row['error']}")
            else:
                log(f"output {output_size:3d} (input {geo.input_size}) {variant:13s} batch {batch:2d}: step "
                    f"{row['step_seconds']:.2f} s ({row['step_cpu_seconds']:.1f} CPU-s), "
                    f"{row['labelled_pixels_per_second']:,.0f} labelled px/s, "
                    f"{row['labelled_pixels_per_cpu_second']:,.0f} per CPU-s, peak RSS {row['peak_rss_gb']:.1f} GiB")
    base = next((row for row in rows if "error" not in row), None)
    if base:
        for row in rows:
            if "error" not in row:
                row["pixels_per_cpu_second_vs_first"] = (
                    row["labelled_pixels_per_cpu_second"] / base["labelled_pixels_per_cpu_second"]
                )
    return rows


def run(options: BenchmarkOptions) -> dict[str, Any]:
    """Entry point of `isl benchmark model` (options: preset, batch_size, repeats, output_sizes, memory_budget_gb).

    With --output_sizes (e.g. "8,24,56,120,248") it measures the training
    throughput table of `output_size_table` instead of the variants.

    The variants are `DEFAULT_VARIANTS`, or those named (comma-separated) in
    the environment variable ISL_BENCHMARK_MODEL_VARIANTS (e.g.
    "float32,bfloat16_xla").
    """
    from isl import presets
    from isl import errors

    config = presets.resolve_config(options.preset)
    batch_size = options.batch_size or config.train.batch_size
    repeats = max(1, options.repeats or 3)
    output_sizes_text = options.output_sizes
    if output_sizes_text:
        try:
            output_sizes = [int(item) for item in output_sizes_text.split(",") if item.strip()]
        except ValueError as error:
            raise errors.InputError(
                f"--output_sizes must be integers like 8,24,56. Received: {output_sizes_text!r}"
            ) from error
        budget = options.memory_budget_gb * 1e9
        print(f"isl benchmark model: preset {config.name}, output sizes {output_sizes}, variants "
              f"{', '.join(OUTPUT_SIZE_VARIANTS)}, batch <= {config.train.batch_size} within "
              f"{budget / 1e9:.0f} GB (modelled), {repeats} repeats, {os.cpu_count()} CPUs "
              f"(load average {os.getloadavg()[0]:.1f}: other processes share them).")
        rows = output_size_table(config, output_sizes, budget, repeats)
        print("Nothing written.")
        return {"preset": config.name, "output_size_table": rows, "load_average_end": os.getloadavg()[0]}
    names = os.environ.get("ISL_BENCHMARK_MODEL_VARIANTS", ",".join(DEFAULT_VARIANTS))
    variants = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        raise errors.InputError(
            f"ISL_BENCHMARK_MODEL_VARIANTS: unknown variant(s) {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(VARIANTS)}"
        )
    print(f"isl benchmark model: preset {config.name}, batch {batch_size}, {repeats} repeats, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}: other processes share them); "
          f"variants {', '.join(variants)}, each in a fresh process.")
    bar = progress_lib.Progress(total=len(variants), label="benchmark model")
    results: dict[str, Any] = {"preset": config.name, "batch_size": batch_size, "repeats": repeats,
                               "load_average_start": os.getloadavg()[0]}
    for variant in variants:
        figures = run_variant(config, variant, batch_size, repeats)
        if "error" in figures:
            print(f"{variant}: failed: {figures['error']}")
        results[variant] = figures
        bar.update(1)
    bar.close()
    results["load_average_end"] = os.getloadavg()[0]
    base = results.get("float32", {}).get("train_step")
    for variant in variants:
        figures = results[variant]
        if "error" in figures:
            continue
        step, forward = figures["train_step"], figures["forward"]
        ratio = f"; {base['seconds'] / step['seconds']:.2f}x the float32 step" if base else ""
        print(f"{variant}: training step {step['seconds']:.2f} s ({step['cpu_seconds']:.1f} CPU-s) per batch of "
              f"{batch_size}, {step['fraction_of_matmul_peak']:.0%} of the "
              f"{figures['matmul_peak_flops_per_second'] / 1e9:.0f} GFLOP/s matmul peak{ratio}; forward "
              f"{forward['seconds']:.2f} s; peak RSS {figures['peak_rss_bytes'] / 2**30:.1f} GiB")
        if base:
            results[variant]["train_step_speedup_over_float32"] = base["seconds"] / step["seconds"]
    print("Nothing written.")
    return results
