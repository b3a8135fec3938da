"""`isl train`: Train a model on TFRecords (tf.distribute strategies, resumable)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

SUMMARY = "Train a model on TFRecords (tf.distribute strategies, resumable)."
DESCRIPTION = """
Train (or fine-tune) a model on TFRecords written by `isl convert`.

The configuration layers, in order: --preset, then --recipe, then --config
(a JSON file), then --set section.key=value overrides, then the explicit
flags below (--mixed_precision, --checkpoint_every_steps, --seed). The fully
resolved config is written to MODEL_DIR/config.json.

Defaults are the paper's: Adam 1e-4 (beta1 0.9, beta2 0.999, epsilon 1e-8),
no decay, no clipping, global batch 16 of 250-px patches with 8-px outputs,
batch norm in training mode with moving averages. Those settings were made
for weeks of training on a cluster.

--recipe=unet_regression trains the peer baseline instead (a U-Net
regression with MSE on standardized targets, as fnet and CARE train it; one
pass per image at prediction). --recipe=unet_distribution trains the same
U-Net with the same batch and schedule under the paper's 256-bin heads and
loss, so every pixel gets a distribution (24-px outputs, 52 px of context).
--recipe=unet_regression_spread is unet_regression also predicting a
log-spread per channel and pixel (beta-NLL on standardized targets). Either
regression gets a per-pixel distribution from `isl calibrate`.
--set train.regression_foreground_weight=A (either regression; 0, the
default, is the plain MSE) weighs each pixel by 1 + A * max(z, 0), z its
standardized target, so the sparse bright structures (nuclei, axons) count
more than the background.

--recipe=cpu trains the same network in hours on a few CPU cores: 120-px
output patches (batch 4), bfloat16, learning rate 1e-3 with warmup and a
cosine decay to --steps, a random rotation and flip per patch, whole-image
Pearson r every 200 steps keeping the best weights, and batch-norm
recalibration at the end. Every part is a train./data./model. option you
can also set alone with --set.

Every evaluation (train.eval_every_steps) logs the evaluation loss and,
with train.eval_pearson (on by default), Pearson r of the predicted median
and mean against the eval images, per target channel, to TensorBoard and
logs/training.csv.

Resuming: checkpoints (model, optimizer state, global step) are saved every
--checkpoint_every_steps steps and every train.checkpoint_every_minutes
minutes, on SIGTERM and at the end, keeping train.keep_checkpoints. Start
the same command again after a crash or kill and it continues from the last
checkpoint to --steps; a finished run does nothing and says so.

SIGTERM (e.g. a batch scheduler's preemption): training stops after the
current step (or evaluation batch), saves a checkpoint, prints where, and
exits with code 143; a second SIGTERM ends it at once. Exit codes: 0 done,
2 bad input, 143 stopped by SIGTERM (resumable), 130 Ctrl-C (not saved).

Fine-tuning: --restore_from=MODEL_DIR (or a .weights.h5 beside its
config.json) copies every layer whose name and shapes match; a different
number of z values re-learns the input projection, new labels get new
heads. --restore_heads=false leaves all heads fresh, --freeze_core trains
only the projection and the heads. Fine-tuning starts at step 0 with a fresh
optimizer, as in the released code.

Writes MODEL_DIR/{config.json, model.weights.h5, checkpoints/, logs/} with
TensorBoard scalars and image panels and logs/training.csv.

Example:
  isl train --data_dir=records --model_dir=runs/b --preset=tiny --steps=2000
"""


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("model_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("data_dir", None, "TFRecords folder written by `isl convert`.", flag_values=flag_values)
    flags.DEFINE_string("model_dir", None, "Output model directory (resumed if it holds checkpoints).",
                        flag_values=flag_values)
    flags.DEFINE_string("preset", "paper", "Named preset: paper, tiny, fovea, condition_a..e.",
                        flag_values=flag_values)
    from isl import presets
    from isl.cli import data_flags

    flags.DEFINE_enum("recipe", None, list(presets.RECIPES),
                      "Training recipe layered over the preset: cpu (the paper network in hours on a few CPU cores: "
                      "120-px outputs, bfloat16, lr 1e-3 cosine, best-weights keeping), unet_regression (the "
                      "fnet/CARE-style peer baseline: a U-Net regression with MSE, one pass per image), "
                      "unet_regression_spread (that U-Net also predicting a spread per pixel, beta-NLL) or "
                      "unet_distribution (that U-Net under the paper's 256-bin heads and loss). See above.",
                      flag_values=flag_values)
    flags.DEFINE_string("config", None, "JSON config file layered over the preset.", flag_values=flag_values)
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable), "
                              "e.g. --set model.output_size=24.", flag_values=flag_values)
    flags.DEFINE_integer("steps", None, "Total number of training steps (a resumed run continues to it).",
                         flag_values=flag_values)
    flags.DEFINE_string("strategy", "default",
                        "default | mirrored | multi_worker (TF_CONFIG) | tpu[:ADDRESS].", flag_values=flag_values)
    flags.DEFINE_string("mixed_precision", None, "'bfloat16' for mixed bfloat16 compute (beyond the paper); "
                        "'' for float32.", flag_values=flag_values)
    flags.DEFINE_string("restore_from", None, "Model dir or .weights.h5 to fine-tune from.",
                        flag_values=flag_values)
    flags.DEFINE_bool("restore_heads", True, "Restore the heads too (false: as --norestore_logits).",
                      flag_values=flag_values)
    flags.DEFINE_bool("freeze_core", False, "Train only the input projection and the heads.",
                      flag_values=flag_values)
    flags.DEFINE_integer("checkpoint_every_steps", None, "Checkpoint interval in steps "
                         "(default: train.checkpoint_every_steps).", flag_values=flag_values)
    flags.DEFINE_integer("seed", None, "Random seed (default: train.seed).", flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.", flag_values=flag_values)
    data_flags.define(flag_values, ("normalization", "channel_map"))
    flag_values["normalization"].help = (
        "Must match the data: the records carry the normalisation isl convert applied (dataset.json), and it is "
        "copied into config.json; a different value is an error. Default: dataset.json's.")
    flag_values["channel_map"].help = (
        "Must match the data: the channel map isl convert applied (dataset.json) is copied into config.json so "
        "isl predict reads raw files the same way; a different map is an error. Default: dataset.json's.")


def resolve(flag_values: Any) -> Any:
    """The experiment config: preset -> --config -> --set -> explicit flags."""
    from isl import config as config_lib
    from isl import presets

    config = presets.resolve_config(flag_values["preset"].value, flag_values["config"].value,
                                    list(flag_values["set"].value or []), recipe=flag_values["recipe"].value)
    from isl.data import parser

    parser.patch_layout(config)  # An output size off the 8 + 16k grid fails here, before anything is written.
    explicit = []
    if flag_values["mixed_precision"].value is not None:
        explicit.append(f"train.mixed_precision={flag_values['mixed_precision'].value}")
    if flag_values["checkpoint_every_steps"].value is not None:
        explicit.append(f"train.checkpoint_every_steps={flag_values['checkpoint_every_steps'].value}")
    if flag_values["seed"].value is not None:
        explicit.append(f"train.seed={flag_values['seed'].value}")
    if flag_values["normalization"].value is not None:
        explicit.append(f"data.normalization={flag_values['normalization'].value}")
    if flag_values["channel_map"].value:
        import json

        explicit.append(f"data.channel_map={json.dumps(list(flag_values['channel_map'].value))}")
    if explicit:
        config = config_lib.apply_overrides(config, explicit)
    return config


# The U-Net regression's training peak, measured (`isl benchmark scaling`, BUILD_NOTES "Session 8, issue 25"):
# 1.9-2.5 GB at batch 8 of 128-px outputs with the in-training Pearson on any image size; modelled as a base
# plus a part linear in batch x output pixels.
UNET_BASE_BYTES = 1.3e9
UNET_BYTES_PER_OUTPUT_PIXEL = 1.2e9 / (8 * 128 * 128)
# The data pipeline (crops in flight, shuffle buffer of patches, the held validation images) above the step.
DATA_BYTES = 0.3e9


def expected_peak_bytes(config: Any, batch_size: int) -> float:
    """The modelled peak RSS of `isl train` at a per-device `batch_size`: the training step plus the data pipeline.

    Training reads crops, never whole wells (`isl.data.crops`), so the figure does not depend on image size.
    """
    if config.model.architecture == "unet_regression":
        return UNET_BASE_BYTES + batch_size * config.model.output_size**2 * UNET_BYTES_PER_OUTPUT_PIXEL + DATA_BYTES
    from isl.model import footprint

    return footprint.training_step_bytes(config, batch_size) + DATA_BYTES


def check_memory(config: Any, batch_size: int, log: Any) -> None:
    """Prints the expected peak memory; refuses when it exceeds the memory available now.

    Raises:
        InputError: naming --set train.batch_size and the largest batch that fits.
    """
    import psutil

    from isl import errors
    from isl.model import geometry as geometry_lib

    if config.model.architecture != "unet_regression":
        try:
            geometry_lib.geometry(config.model)
        except ValueError as error:
            raise errors.InputError(f"model.output_size: {error}") from None
    needed = expected_peak_bytes(config, batch_size)
    available = psutil.virtual_memory().available
    log(f"Expected peak memory: about {needed / 1e9:.1f} GB (batch {batch_size} per device, any image size); "
        f"{available / 1e9:.1f} GB available now.")
    if needed <= available:
        return
    fits = next((batch for batch in range(batch_size - 1, 0, -1) if expected_peak_bytes(config, batch) <= available),
                0)
    advice = (f"--set train.batch_size={fits} fits" if fits else
              "no batch fits: lower --set model.output_size or free memory")
    raise errors.InputError(
        f"train.batch_size={config.train.batch_size}: training needs about {needed / 1e9:.1f} GB, more than the "
        f"{available / 1e9:.1f} GB available now; {advice} (or stop other jobs).")


# Above this ratio of eval to training loss the summary says what the two figures are.
LOSS_GAP_RATIO = 3.0


def loss_gap_note(config: Any, loss: float | None, eval_loss: float | None) -> str | None:
    """One paragraph on what a large gap between the training and eval losses means, or None."""
    if loss is None or eval_loss is None or loss <= 0 or eval_loss < LOSS_GAP_RATIO * loss:
        return None
    if config.model.architecture == "unet_regression":
        what = ("the mean squared error of standardized targets (1.0 = always predicting a channel's training mean, "
                "with the per-channel training mean / std printed when training started)")
        differ = ("stain intensities far from the training mean in units of the training std (a channel nearly "
                  "empty in the training images makes that std small)")
    else:
        what = "the 256-bin cross-entropy of the paper's loss, summed over the heads with labels"
        differ = "images or stains unlike the training ones"
    return (
        f"Note: the eval loss is {eval_loss / loss:.0f}x the training loss. Both are {what}. The training figure is "
        f"the mean over the last {config.train.eval_every_steps} steps with batch norm on each batch's own statistics; "
        "the eval figure comes from the eval images with batch norm's moving averages as they were before any "
        f"recalibration (momentum {config.model.batch_norm_momentum:g}: after a short run they still hold much of "
        f"their starting values). A large gap means {differ}, or moving averages that have not settled; the "
        "whole-image Pearson r, when printed, is measured on the written weights and says how good they are."
    )


def _check_data_contract(flag_values: Any) -> None:
    """--normalization / --channel_map must say what dataset.json records (the records already carry them).

    Raises:
        InputError: naming the flag, its value and the recorded one.
    """
    import json

    from isl import errors
    from isl.data import channel_map as channel_map_lib
    from isl.data import normalization as normalization_lib

    path = os.path.join(flag_values["data_dir"].value, "dataset.json")
    try:
        with open(path, encoding="utf-8") as handle:
            description = json.load(handle)
    except (OSError, ValueError):
        return  # The trainer reports a missing or bad dataset.json itself.
    given = flag_values["normalization"].value
    recorded = normalization_lib.from_description(description)
    if given is not None and given != recorded:
        raise errors.InputError(
            f"--normalization={given}: {path} records normalization {recorded} (the records were converted with it); "
            f"convert again with --normalization={given} or leave the flag out.")
    pairs = flag_values["channel_map"].value
    if pairs:
        wanted = channel_map_lib.to_pairs(channel_map_lib.parse(pairs))
        recorded_map = tuple(description.get("channel_map", ()) or ())
        if wanted != recorded_map:
            raise errors.InputError(
                f"--channel_map={','.join(pairs)}: {path} records channel_map {','.join(recorded_map) or '(none)'} "
                "(the records hold the mapped names); convert again with that map or leave the flag out.")


def stopped_hint(flag_values: Any) -> str:
    """Where things stand after SIGTERM outside the training loop (start-up)."""
    model_dir = flag_values["model_dir"].value or "MODEL_DIR"
    return (f"Stopped before this run's first step; earlier checkpoints, if any, are in "
            f"{os.path.join(model_dir, 'checkpoints')}. Run the same command to start or resume.")


@contextlib.contextmanager
def _no_trace_of_a_failed_start(model_dir: str, strategy: str) -> Iterator[None]:
    """A run that fails before its first checkpoint leaves MODEL_DIR as it found it.

    Training writes config.json, trained_channels.json and logs/ before the
    first step; without a checkpoint they only mislead (a folder that looks
    like a model but holds no weights). When the run raises and
    MODEL_DIR/checkpoints holds no complete checkpoint, the entries this run
    added are removed (isl.cli.main then removes the folder if it made it).
    With a checkpoint everything stays, so the same command resumes.
    Multi-worker runs share MODEL_DIR between processes and are left alone.
    """
    from isl.io import atomic
    from isl.io import model_dir as model_dir_lib
    from isl.train import resilience

    if "://" in model_dir or strategy.startswith("multi_worker"):
        yield
        return
    before = set(os.listdir(model_dir)) if os.path.isdir(model_dir) else set()
    try:
        yield
    except BaseException:
        if os.path.isdir(model_dir) and not resilience.checkpoint_candidates(
                model_dir_lib.ModelDir(model_dir).checkpoints):
            for name in set(os.listdir(model_dir)) - before:
                with contextlib.suppress(OSError):  # The original error is the one to report.
                    atomic.remove_path(os.path.join(model_dir, name))
        raise


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import errors

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    for name in ("data_dir", "model_dir", "steps"):
        if flag_values[name].value is None:
            raise errors.InputError(f"--{name} is required.")
    config = resolve(flag_values)
    _check_data_contract(flag_values)

    from isl.train import strategy as strategy_lib

    # The strategy first: multi-worker and TPU runtimes must start before
    # any other TensorFlow work.
    strategy = strategy_lib.make_strategy(flag_values["strategy"].value)
    from isl.io import model_dir as model_dir_lib
    from isl.train import trainer

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    check_memory(config, strategy_lib.per_replica_batch_size(strategy, config.train.batch_size), log)
    with _no_trace_of_a_failed_start(flag_values["model_dir"].value, flag_values["strategy"].value):
        result = trainer.train(
            config,
            data_dir=flag_values["data_dir"].value,
            model_dir=flag_values["model_dir"].value,
            total_steps=flag_values["steps"].value,
            strategy=strategy,
            restore_from=flag_values["restore_from"].value,
            restore_heads=flag_values["restore_heads"].value,
            freeze_core=flag_values["freeze_core"].value,
            show_progress=flag_values["progress"].value,
            log=log,
        )
    model_dir = result.model_dir
    layout = model_dir_lib.ModelDir(model_dir)
    paths = {
        "model_dir": model_dir,
        "config": layout.config,
        "weights": layout.weights,
        "checkpoints": layout.checkpoints,
        "logs": layout.logs,
        "csv": layout.training_csv,
    }
    losses = result.losses
    eval_losses = result.eval_losses
    summary: dict[str, Any] = {
        "final_step": result.final_step,
        "resumed_from_step": result.resumed_from_step,
        "already_finished": result.already_finished,
        "interrupted": result.interrupted,
        "final_loss": losses.get("loss"),
        "final_eval_loss": eval_losses.get("loss"),
        "final_head_losses": {
            name: value for name, value in (eval_losses or losses).items() if name.startswith("head_")
        },
        "steps_per_second": round(result.steps_per_second, 4),
        "labelled_pixels_per_second": round(result.labelled_pixels_per_second, 1),
        "labelled_pixels_per_cpu_second": round(result.labelled_pixels_per_cpu_second, 1),
        "pearson": result.pearson,
        "best_step": result.best_step,
        "wall_seconds": round(result.wall_seconds, 2),
        "num_replicas": strategy.num_replicas_in_sync,
        **paths,
    }
    if result.transfer:
        summary["transfer"] = {
            "restored": len(result.transfer["restored"]),
            "relearned": result.transfer["skipped_shape"],
            "new": result.transfer["skipped_absent"],
            "heads_skipped": len(result.transfer["skipped_heads"]),
        }
    if result.already_finished:
        print(f"Nothing to do: {model_dir} already reached step {result.final_step}.")
    elif result.interrupted:
        print(f"Interrupted at step {result.final_step}; checkpoint saved in {paths['checkpoints']}. "
              "Run the same command to resume.")
    else:
        loss_text = f"loss {losses['loss']:.4f}" if "loss" in losses else ""
        if "loss" in eval_losses:
            loss_text += f", eval loss {eval_losses['loss']:.4f}"
        start = f" (resumed from step {result.resumed_from_step})" if result.resumed_from_step else ""
        print(f"Trained to step {result.final_step}{start}: {loss_text}; "
              f"{result.steps_per_second:.2f} steps/s, {result.labelled_pixels_per_second:,.0f} labelled "
              f"output pixels/s ({result.labelled_pixels_per_cpu_second:,.0f} per CPU-second).")
        note = loss_gap_note(config, losses.get("loss"), eval_losses.get("loss"))
        if note:
            print(note)
        if result.pearson:
            channels = sorted(name[len("pearson_median_"):] for name in result.pearson
                              if name.startswith("pearson_median_"))
            split = "validation" if result.pearson_split == "val" else "eval"
            print(f"Whole-image Pearson r on the {split} images (median / mean): " + ", ".join(
                f"{name} {result.pearson[f'pearson_median_{name}']:.3f} / "
                f"{result.pearson.get(f'pearson_mean_{name}', float('nan')):.3f}" for name in channels))
        if result.best_step is not None:
            print(f"model.weights.h5 holds the weights of step {result.best_step} (best whole-image Pearson r).")
    print(f"Model: {model_dir} (config.json, model.weights.h5, checkpoints/, logs/ for TensorBoard, "
          f"logs/training.csv)")
    return summary
