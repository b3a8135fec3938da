"""Trains the paper network and the U-Net regression baseline on one GPU, for equal wall-clock time, on JAX.

Why this script exists: the GPU machines this project is lent (see BUILD_NOTES.md, "GPU training") have JAX
but no TensorFlow, and nothing can be installed there from the network. Keras 3 runs the same model code
(`isl.model.builder`, `isl.model.losses`, `isl.model.unet_regression`) on JAX, so this script trains the
networks `isl train` would build, from a well packed by `scripts/gpu_pack.py`, and writes Keras weight files
that `scripts/gpu_import.py` turns into model folders for `isl predict` / `isl evaluate` (TensorFlow side).

What it reproduces of `isl train`, per arm (`--arm NAME=RECIPE,...`: the `condition_b` preset as it is, or with
the `cpu` or `unet_regression` recipe, plus overrides):
  * the data rules of `isl.data.parser`: a uniformly random crop of the zero-padded well, left-right flip
    with p = 0.5, 2 x 2 patches at the layout's stride, a random multiple of 90 degrees per patch
    (`data.rotate_per_example`) or per batch (the paper); input values over their type's maximum, mapped to
    the network's z values with value/mask pairs (`isl.data.assemble.network_input`); labels as
    `Parser.finish_batch` builds them (input heads from the patch centre, target heads with their masks, the
    synthetic NEURITE channel as the mean of its sources); intensity jitter (`data.corrupt_*`) is refused;
  * the loss (`ISLLoss`, or the regression's MSE on standardized targets with the training split's
    per-channel mean / std, as `dense_eval.target_statistics` computes them);
  * Adam (beta 0.9 / 0.999, epsilon 1e-8) at a constant rate (the paper) or with linear warmup and cosine
    decay to the last step (`train.lr_schedule`), the arm's batch-norm momentum, bfloat16.
Differences: batches are sampled on the GPU inside the jitted step (the same distribution, a different
random stream); the number of steps follows from the wall-clock budget (measured after compilation);
no in-training evaluation (scored afterwards with `isl evaluate` on the CPU machine).

Usage (on the GPU machine, from the repository root, with keras on the path):
  KERAS_BACKEND=jax python scripts/gpu_train.py --well=.gpu/train_well.npz --out=$OUT --budget_s=480
Writes to --out, per arm NAME (default arms: paper, the `cpu` recipe at batch 8, and unet):
NAME.weights.h5.partNN (split below 15 MiB, the device's file limit) and NAME.config.json; then
train_log.json (steps, losses, timings) and predict_benchmark.json. The device returns at most 8 files: two
arms fit (the paper network's weights are 3 parts); for an ablation of more arms, run it in several calls.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

START = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - START:7.1f} s] {message}", flush=True)


def well_planes(path: str, config) -> tuple[np.ndarray, np.ndarray]:
    """The packed well as network planes on its zero-padded grid.

    Returns:
        x `[H + 2p, W + 2p, 2 * num_z_values]` float32 value/mask pairs (mask 0 on the padding) and
        y `[H + 2p, W + 2p, num_target_heads, 2]` float32 target value / mask, heads in
        `config.channels.output_target_channels` order; p is the layout's padding (`border` when padded).
    """
    from isl.data import assemble
    from isl.data.layout import patch_layout

    pad = patch_layout(config).pad
    packed = np.load(path)
    inputs, targets, scales = packed["inputs_0"], packed["targets_0"], packed["scales_0"]
    height, width, _ = inputs.shape
    stack = np.moveaxis(inputs.astype(np.float32) / scales[0], -1, 0)
    valid = np.ones((height, width), np.float32)
    x = np.zeros((height + 2 * pad, width + 2 * pad, 2 * config.channels.num_z_values), np.float32)
    x[pad : pad + height, pad : pad + width] = assemble.network_input(stack, config.channels.num_z_values, valid)
    channels = config.channels
    values, masks = assemble.target_stack(
        {name: targets[..., index].astype(np.float32) / scales[1 + index]
         for index, name in enumerate(channels.target_channels)},
        channels,
        mask=valid,
    )
    y = np.zeros((height + 2 * pad, width + 2 * pad, values.shape[-1], 2), np.float32)
    y[pad : pad + height, pad : pad + width, :, 0] = values
    y[pad : pad + height, pad : pad + width, :, 1] = masks
    return x, y


def target_statistics(y: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per target head, mean and std of the labelled values (`dense_eval.pooled_statistics`, as `isl train`)."""
    from isl.train import dense_eval

    return dense_eval.pooled_statistics([[y[..., index, 0][y[..., index, 1] > 0]] for index in range(y.shape[2])])


def make_sampler(config, x, y):
    """A jittable `key -> (inputs [B, P, P, 2Z], labels [B, O, O, heads, 2])` following `isl.data.parser`."""
    import jax
    import jax.numpy as jnp

    from isl.data.layout import patch_layout

    layout = patch_layout(config)
    size, out, border = layout.patch_size, layout.output_size, layout.border
    crop, offsets = layout.crop_size, layout.patch_offsets
    data = config.data
    if data.corrupt_offset_std or data.corrupt_multiplier_std or data.corrupt_noise_std:
        raise ValueError("data.corrupt_* (intensity jitter) is not implemented here; isl train has it")
    if config.train.batch_size % 4:
        raise ValueError("batch_size must be a multiple of 4 (2 x 2 patches per crop)")
    crops = config.train.batch_size // 4
    num_z = config.channels.num_z_values
    x, y = jnp.asarray(x), jnp.asarray(y)
    max_y, max_x = x.shape[0] - crop, x.shape[1] - crop
    if max_y < 0 or max_x < 0:
        raise ValueError(f"the padded well {x.shape[:2]} is smaller than the crop {crop}")

    def cut_crop(top, left, flip):
        """The 2 x 2 patches `[4, P, P, 2Z]` and labels `[4, O, O, heads, 2]` of the crop at (top, left)."""
        crop_x = jax.lax.dynamic_slice(x, (top, left, 0), (crop, crop, x.shape[2]))
        crop_y = jax.lax.dynamic_slice(y, (top, left, 0, 0), (crop, crop, y.shape[2], 2))
        crop_x = jnp.where(flip, crop_x[:, ::-1], crop_x)
        crop_y = jnp.where(flip, crop_y[:, ::-1], crop_y)
        patches, labels = [], []
        for row, column in offsets:
            patch = crop_x[row : row + size, column : column + size]
            centre = patch[border : border + out, border : border + out].reshape(out, out, num_z, 2)
            target = crop_y[row + border : row + border + out, column + border : column + border + out]
            patches.append(patch)
            labels.append(jnp.concatenate([centre, target], axis=2))
        return jnp.stack(patches), jnp.stack(labels)

    def one_crop(key):
        key_y, key_x, key_flip = jax.random.split(key, 3)
        top = jax.random.randint(key_y, (), 0, max_y + 1)
        left = jax.random.randint(key_x, (), 0, max_x + 1)
        flip = jax.random.bernoulli(key_flip) if config.data.flip else jnp.asarray(False)
        return cut_crop(top, left, flip)

    def rotate(k, patch, label, first_spatial_axis=0):
        """Rotates inputs and labels by k * 90 degrees in their two spatial axes."""
        axes = (first_spatial_axis, first_spatial_axis + 1)
        branches = [
            (lambda pair, turns=turns: tuple(jnp.rot90(part, turns, axes=axes) for part in pair))
            for turns in range(4)
        ]
        return jax.lax.switch(k, branches, (patch, label))

    def sample(key):
        key_crops, key_rotations = jax.random.split(key)
        patches, labels = jax.vmap(one_crop)(jax.random.split(key_crops, crops))
        patches = patches.reshape((-1,) + patches.shape[2:])
        labels = labels.reshape((-1,) + labels.shape[2:])
        if config.data.rotate:
            count = patches.shape[0] if config.data.rotate_per_example else 1
            turns = jax.random.randint(key_rotations, (count,), 0, 4)
            if config.data.rotate_per_example:
                patches, labels = jax.vmap(rotate)(turns, patches, labels)
            else:  # the paper's quirk: one rotation for the whole batch
                patches, labels = rotate(turns[0], patches, labels, first_spatial_axis=1)
        return patches, labels

    sample.cut_crop = cut_crop  # for the equivalence check against isl.data.parser
    return sample


def learning_rate(step: int, total: int, train_config) -> float:
    """The learning rate of `isl train`: constant (the paper), or linear warmup from 0 then a half cosine to
    `final_learning_rate_fraction` at `total`."""
    peak = train_config.learning_rate
    if train_config.lr_schedule == "constant":
        return peak
    warmup = min(train_config.warmup_steps, max(total - 1, 0))
    if step < warmup:
        return peak * step / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    alpha = train_config.final_learning_rate_fraction
    return peak * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * progress)))


class Run:
    """One model's training state: the jitted step and the Keras model whose variables it updates."""

    def __init__(self, name: str, config, x: np.ndarray, y: np.ndarray, seed: int):
        import jax
        import keras

        from isl.model import builder, geometry as geometry_lib, losses, unet_regression

        self.name, self.config = name, config
        size = geometry_lib.geometry(config.model).input_size
        keras.utils.set_random_seed(seed)
        self.model = builder.build_model(config, size)
        if config.model.architecture == "unet_regression":
            loss = unet_regression.RegressionLoss(
                config.channels.num_input_heads, config.model.regression_target_mean, config.model.regression_target_std
            )
        else:
            loss = losses.ISLLoss(config.channels)
        self.optimizer = keras.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
        self.optimizer.build(self.model.trainable_variables)
        self.lr_index = next(
            index for index, variable in enumerate(self.optimizer.variables) if variable.name == "learning_rate"
        )
        sample = make_sampler(config, x, y)
        model, optimizer, lr_index = self.model, self.optimizer, self.lr_index

        def compute_loss(trainable, non_trainable, inputs, labels):
            predictions, non_trainable = model.stateless_call(trainable, non_trainable, inputs, training=True)
            return loss(labels, predictions), non_trainable

        gradient_fn = jax.value_and_grad(compute_loss, has_aux=True)

        def step(state, key, rate):
            trainable, non_trainable, optimizer_variables = state
            inputs, labels = sample(key)
            (value, non_trainable), grads = gradient_fn(trainable, non_trainable, inputs, labels)
            optimizer_variables = list(optimizer_variables)
            optimizer_variables[lr_index] = rate.astype(optimizer_variables[lr_index].dtype)
            trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
            return value, (trainable, non_trainable, optimizer_variables)

        self.step = jax.jit(step, donate_argnums=0)
        self.state = (
            [variable.value for variable in self.model.trainable_variables],
            [variable.value for variable in self.model.non_trainable_variables],
            [variable.value for variable in self.optimizer.variables],
        )
        self.key = jax.random.PRNGKey(seed)
        self.steps = 0
        self.history: list[tuple[int, float, float]] = []  # (step, seconds of training, loss)
        self.train_seconds = 0.0

    def run_steps(self, count: int, total: int) -> float:
        """Runs `count` steps of a `total`-step schedule; returns the last loss (synchronizes)."""
        import jax
        import jax.numpy as jnp

        value = None
        for _ in range(count):
            self.key, key = jax.random.split(self.key)
            rate = jnp.asarray(learning_rate(self.steps, total, self.config.train), jnp.float32)
            value, self.state = self.step(self.state, key, rate)
            self.steps += 1
        return float(jax.block_until_ready(value))

    def compile(self) -> float:
        """Compiles and runs the first step; returns its seconds."""
        started = time.time()
        loss = self.run_steps(1, 10**6)
        seconds = time.time() - started
        log(f"{self.name}: first step (compilation) {seconds:.1f} s, loss {loss:.4f}")
        return seconds

    def train_for(self, seconds: float) -> None:
        """Trains for about `seconds` of wall-clock, the schedule sized from 10 timed steps."""
        started = time.time()
        self.run_steps(2, 10**6)
        timed = time.time()
        self.run_steps(10, 10**6)
        per_step = (time.time() - timed) / 10
        total = self.steps + max(int((seconds - (time.time() - started)) / per_step), 1)
        log(f"{self.name}: {per_step * 1000:.1f} ms per step; schedule of {total} steps for {seconds:.0f} s")
        self.total = total
        while self.steps < total:
            loss = self.run_steps(min(100, total - self.steps), total)
            elapsed = time.time() - started
            self.history.append((self.steps, round(elapsed, 2), round(loss, 5)))
            if self.steps % 1000 < 100:
                log(f"{self.name}: step {self.steps}/{total}, loss {loss:.4f}, {elapsed:.0f} s")
            if elapsed > seconds * 1.08 and self.steps < total:
                log(f"{self.name}: stopped at step {self.steps} (over the time budget)")
                break
        self.train_seconds = time.time() - started
        self.per_step = per_step

    def save(self, out_dir: str) -> list[str]:
        """Writes the weights (split in < 15 MiB parts) and the config; returns the paths."""
        from isl import config as config_lib

        trainable, non_trainable, _ = self.state
        for variable, value in zip(self.model.trainable_variables, trainable):
            variable.assign(value)
        for variable, value in zip(self.model.non_trainable_variables, non_trainable):
            variable.assign(value)
        whole = f"/tmp/{self.name}.weights.h5"
        self.model.save_weights(whole)
        with open(whole, "rb") as handle:
            data = handle.read()
        part_size = 15 * 1024 * 1024
        paths = []
        for index in range(0, len(data), part_size):
            path = os.path.join(out_dir, f"{self.name}.weights.h5.part{index // part_size:02d}")
            with open(path, "wb") as handle:
                handle.write(data[index : index + part_size])
            paths.append(path)
        config_lib.save_config(self.config, os.path.join(out_dir, f"{self.name}.config.json"))
        log(f"{self.name}: wrote {len(data) / 2**20:.1f} MiB in {len(paths)} parts")
        return paths


def predict_benchmark(run: Run, out_dir: str, repeats: int = 5) -> dict:
    """Times the trained paper network's whole-well prediction on the GPU (forward pass and statistics).

    A 1024 x 1024 well as 4 tiles of 520 x 520 outputs (input 762 with the 121-px context), bfloat16,
    median and mean of the target heads only (what `isl predict` writes), one jitted call per well.
    """
    import jax

    from isl.data.layout import patch_layout
    from isl.model import builder, statistics

    config = run.config
    num_input_heads = config.channels.num_input_heads
    layout = patch_layout(config)
    tile = layout.output_size + 16 * -(-(512 - layout.output_size) // 16)  # the smallest valid output >= 512
    size = tile + 2 * layout.border
    model = builder.build_model(config, size)
    model.set_weights(run.model.get_weights())
    trainable = [variable.value for variable in model.trainable_variables]
    non_trainable = [variable.value for variable in model.non_trainable_variables]

    def predict(inputs):
        logits, _ = model.stateless_call(trainable, non_trainable, inputs, training=False)
        probabilities = statistics.probabilities_from_logits(logits[..., num_input_heads:, :])
        values = statistics.distribution_statistics(probabilities, ("median", "mean"))
        return values["median"], values["mean"]

    predict = jax.jit(predict)
    inputs = jax.random.uniform(jax.random.PRNGKey(1), (4, size, size, 2 * config.channels.num_z_values))
    inputs = inputs.at[..., 1::2].set(1.0)
    started = time.time()
    jax.block_until_ready(predict(inputs))
    compile_seconds = time.time() - started
    times = []
    for _ in range(repeats):
        started = time.time()
        jax.block_until_ready(predict(inputs))
        times.append(time.time() - started)
    result = {
        "well": f"1024 x 1024, 13 z, 4 tiles of {tile}-px outputs (input {size})",
        "compile_and_first_s": round(compile_seconds, 2),
        "median_s": round(float(np.median(times)), 4),
        "times_s": [round(value, 4) for value in times],
    }
    log(f"predict: 1024 x 1024 well in {result['median_s']} s (median of {repeats}; first {compile_seconds:.1f} s)")
    with open(os.path.join(out_dir, "predict_benchmark.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    return result


DEFAULT_ARMS = ("paper=cpu,train.batch_size=8", "unet=unet_regression")


def arm_config(spec: str, common: list[str]):
    """`NAME=RECIPE[,key=value,...]` -> (name, config); the regression's target statistics are filled in later."""
    from isl import presets

    name, _, rest = spec.partition("=")
    recipe, *overrides = rest.split(",")
    if not name or recipe not in ("faithful", "cpu", "unet_regression"):
        raise SystemExit(f"--arm {spec!r}: expected NAME=RECIPE[,key=value,...], RECIPE faithful, cpu or "
                         "unet_regression")
    config = presets.resolve_config(
        "condition_b", recipe=None if recipe == "faithful" else recipe, overrides=[*common, *overrides]
    )
    return name, config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--well", required=True, help="the .npz written by scripts/gpu_pack.py")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--budget_s", type=float, default=420.0, help="wall-clock seconds for the whole script")
    parser.add_argument(
        "--arm", action="append", default=[],
        help="NAME=RECIPE[,key=value,...]: one model to train, RECIPE one of faithful (the condition_b preset as "
        "it is), cpu, unet_regression, then config overrides; repeatable, each arm gets an equal share of the "
        f"time (default: {' '.join(DEFAULT_ARMS)})",
    )
    parser.add_argument("--set", action="append", default=[], help="key=value override for every arm")
    args = parser.parse_args()
    import jax
    import keras

    log(f"JAX {jax.__version__}, Keras {keras.__version__} ({keras.backend.backend()}), devices {jax.devices()}")
    os.makedirs(args.out, exist_ok=True)
    deadline = START + args.budget_s
    runs = {}
    for spec in args.arm or DEFAULT_ARMS:
        name, config = arm_config(spec, args.set)
        x, y = well_planes(args.well, config)
        if config.model.architecture == "unet_regression":
            means, stds = target_statistics(y)
            log(f"{name}: target mean {np.round(means, 4).tolist()}, std {np.round(stds, 4).tolist()}")
            model_config = dataclasses.replace(config.model, regression_target_mean=means, regression_target_std=stds)
            config = dataclasses.replace(config, model=model_config)
        log(f"{name}: planes {x.shape} / {y.shape}; building")
        runs[name] = Run(name, config, x, y, seed=0)
        runs[name].compile()
    save_margin = 25.0 * len(runs)
    each = (deadline - time.time() - save_margin) / len(runs)
    log(f"training each model for {each:.0f} s")
    summary = {}
    for name, run in runs.items():
        run.train_for(each)
        files = run.save(args.out)
        summary[name] = {
            "steps": run.steps,
            "schedule_steps": run.total,
            "train_seconds": round(run.train_seconds, 1),
            "ms_per_step": round(run.per_step * 1000, 2),
            "batch_size": run.config.train.batch_size,
            "output_size": run.config.model.output_size,
            "architecture": run.config.model.architecture,
            "learning_rate": [run.config.train.lr_schedule, run.config.train.learning_rate],
            "history": run.history,
            "files": [os.path.basename(path) for path in files],
        }
        with open(os.path.join(args.out, "train_log.json"), "w") as handle:
            json.dump({"device": str(jax.devices()[0]), "runs": summary}, handle, indent=1)
    paper_runs = [run for run in runs.values() if run.config.model.architecture == "concordance"]
    if paper_runs and time.time() < deadline + 60:
        predict_benchmark(paper_runs[0], args.out)
    for name, entry in summary.items():
        last = entry["history"][-1][2] if entry["history"] else float("nan")
        log(f"{name}: {entry['steps']} steps of batch {entry['batch_size']} in {entry['train_seconds']} s "
            f"({entry['ms_per_step']} ms/step), last loss {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
