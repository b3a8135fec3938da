"""`isl benchmark model`: forward and training-step speed of the network.

Times, for float32 and for the "mixed_bfloat16" option, a batch of the
preset's training patches (16 x 250 x 250 x 52 for the paper):

* forward (inference-mode batch norm);
* one training step: forward, loss, backward and the Adam update, with
  training-mode batch norm (the faithful step of the paper).

Achieved FLOP/s count the convolution FLOPs (`isl describe`, 2 x MACs, core
and heads); a training step is counted as 3 x the forward FLOPs. They are
reported as a fraction of a matmul peak measured in the same run
(a 4096 x 4096 matmul in each precision). Each timing is the median of
`--repeats` runs after one warm-up run (whose time, mostly graph
construction and oneDNN kernel selection, is reported separately).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

from isl import progress as progress_lib

MATMUL_SIZE = 4096
PRECISIONS = (("float32", ""), ("bfloat16", "bfloat16"))


def _median_time(function, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak(dtype: str, repeats: int = 5) -> float:
    """FLOP/s of a 4096^2 matmul in `dtype` ("float32" or "bfloat16"), median."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((MATMUL_SIZE, MATMUL_SIZE)), dtype)
    b = tf.cast(tf.random.normal((MATMUL_SIZE, MATMUL_SIZE)), dtype)
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul().numpy()
    seconds, _ = _median_time(lambda: matmul().numpy(), repeats)
    return 2 * MATMUL_SIZE**3 / seconds


def benchmark_precision(config: Any, batch_size: int, repeats: int, log=print) -> dict[str, Any]:
    """Times forward and training step of `config`'s model; returns figures."""
    import keras
    import numpy as np
    import tensorflow as tf

    from isl.cli import describe as describe_lib
    from isl.model import builder
    from isl.model import geometry
    from isl.model import losses

    geo = geometry.geometry(config.model)
    flops_per_patch = describe_lib.describe(config, geo.input_size)["flops_per_patch"]["total"]
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

    @tf.function
    def forward():
        return model(inputs, training=False)

    @tf.function
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
        seconds, times = _median_time(lambda f=function: np.asarray(f()), repeats)
        result[name] = {
            "seconds": seconds,
            "all_seconds": times,
            "first_call_seconds": warmup,
            "flops": flops,
            "flops_per_second": flops / seconds,
        }
        log(f"  {name}: median {seconds:.2f} s over {repeats} ({', '.join(f'{t:.2f}' for t in times)}); "
            f"first call {warmup:.1f} s; {flops / seconds / 1e9:.0f} GFLOP/s")
    return result


def run(flag_values: Any) -> dict[str, Any]:
    """Entry point of `isl benchmark model` (flags: --preset, --batch_size, --repeats)."""
    import os

    from isl import config as config_lib

    config = config_lib.resolve_config(flag_values["preset"].value)
    batch_size = flag_values["batch_size"].value or config.train.batch_size
    repeats = max(1, flag_values["repeats"].value or 3)
    print(f"isl benchmark model: preset {config.name}, batch {batch_size}, {repeats} repeats, "
          f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}: other processes share them).")
    bar = progress_lib.Progress(total=2 * len(PRECISIONS), label="benchmark model")
    results: dict[str, Any] = {"preset": config.name, "batch_size": batch_size, "repeats": repeats}
    for label, policy in PRECISIONS:
        peak = matmul_peak(label)
        print(f"{label}: matmul peak {peak / 1e9:.0f} GFLOP/s ({MATMUL_SIZE}^2)")
        precision_config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=policy))
        figures = benchmark_precision(precision_config, batch_size, repeats)
        for name in ("forward", "train_step"):
            figures[name]["fraction_of_matmul_peak"] = figures[name]["flops_per_second"] / peak
            bar.update(1)
        figures["matmul_peak_flops_per_second"] = peak
        results[label] = figures
    bar.close()
    ratio = results["float32"]["train_step"]["seconds"] / results["bfloat16"]["train_step"]["seconds"]
    results["train_step_speedup_bfloat16"] = ratio
    for label, _ in PRECISIONS:
        step = results[label]["train_step"]
        print(f"{label}: training step {step['seconds']:.2f} s per batch of {batch_size} "
              f"({step['fraction_of_matmul_peak']:.0%} of the matmul peak); forward "
              f"{results[label]['forward']['seconds']:.2f} s")
    print(f"bfloat16 training step speed-up over float32: {ratio:.2f}x. Nothing written.")
    return results
