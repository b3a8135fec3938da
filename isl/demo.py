"""The end-to-end demo on embedded synthetic data, as a list of steps.

Each step is a function `step(state) -> dict of figures` that reads and
extends a shared `DemoState`; `run_demo` runs them in order. Later stages
(training, prediction, evaluation) add their steps to `STEPS`.

Layout of the demo folder::

    OUTPUT_DIR/
      raw/well-A1/lab-SYNTHETIC,...,z_depth-0,channel-PHASE_CONTRAST,is_mask-false.png
      records/train-00000-of-00001.tfrecord, eval-..., dataset.json
      model/config.json, model.weights.h5, checkpoints/, logs/
      predictions/<well>/...,kind-PREDICTED,statistic-MEDIAN.png, panels, metrics.json
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

from isl import config as config_lib
from isl import presets
from isl import progress as progress_lib
from isl.io import atomic


@dataclasses.dataclass
class DemoState:
    """What the demo steps share.

    Attributes:
        output_dir: the demo folder.
        config: the experiment config (the `tiny` preset by default).
        num_wells, image_size, num_z, num_batches, seed: demo sizes.
        show_progress: draw progress bars on stderr.
        log: where step messages go (print by default).
        results: figures and paths gathered so far, by step name.
    """

    output_dir: str
    config: config_lib.ExperimentConfig
    num_wells: int = 4
    image_size: int = 256
    num_z: int = 13
    num_batches: int = 8
    train_steps: int = 500
    seed: int = 0
    show_progress: bool = True
    log: Callable[[str], None] = print
    results: dict = dataclasses.field(default_factory=dict)

    @property
    def raw_dir(self) -> str:
        return os.path.join(self.output_dir, "raw")

    @property
    def records_dir(self) -> str:
        return os.path.join(self.output_dir, "records")

    @property
    def model_dir(self) -> str:
        return os.path.join(self.output_dir, "model")

    @property
    def predictions_dir(self) -> str:
        return os.path.join(self.output_dir, "predictions")


def generate_step(state: DemoState) -> dict:
    """Writes the synthetic wells (lab file naming, 16-bit PNG) into OUTPUT_DIR/raw."""
    from isl.data import synthetic

    start = time.perf_counter()
    with atomic.output_directory(state.raw_dir, overwrite=True) as temporary:
        directories = synthetic.write_synthetic_dataset(
            temporary, num_wells=state.num_wells, size=state.image_size, num_z=state.num_z, seed=state.seed
        )
    seconds = time.perf_counter() - start
    files = sum(len(os.listdir(os.path.join(state.raw_dir, os.path.basename(d)))) for d in directories)
    state.log(
        f"[1] synthetic data: {state.num_wells} wells x ({state.num_z} phase-contrast z slices + DAPI, MAP2, NFH), "
        f"{state.image_size}x{state.image_size} px, {files} PNG files in {seconds:.1f}s -> {state.raw_dir}"
    )
    return {"raw_dir": state.raw_dir, "num_files": files, "seconds": round(seconds, 3)}


def convert_step(state: DemoState) -> dict:
    """Converts OUTPUT_DIR/raw into TFRecords in OUTPUT_DIR/records (1 well in 4, or the last of 2-3, held out)."""
    from isl.data import convert as convert_lib

    bar = progress_lib.Progress(state.num_wells, "convert", enabled=state.show_progress)
    result = convert_lib.convert(
        [state.raw_dir],
        state.records_dir,
        state.config.channels,
        num_shards=1,
        eval_every=min(4, state.num_wells) if state.num_wells >= 2 else 0,
        overwrite=True,
        progress=lambda done, total, name: bar.update(1, postfix=name),
    )
    bar.close()
    state.log(
        f"[2] convert: {result.num_examples['train']} train + {result.num_examples['eval']} eval well(s) -> "
        f"{result.output_dir} (dataset.json: z counts {result.description['z_counts']}, "
        f"sizes {result.description['image_sizes']})"
    )
    return {"records_dir": result.output_dir, "dataset_json": result.dataset_json, "num_examples": result.num_examples}


def pipeline_step(state: DemoState) -> dict:
    """Pulls batches through the training pipeline; reports shapes and patches per second."""
    from isl.data import parser, pipeline

    config = state.config
    layout = parser.patch_layout(config)
    dataset = pipeline.build_dataset(state.records_dir, config, split="train", seed=state.seed)
    iterator = iter(dataset)
    inputs, labels = next(iterator)  # Warm-up: tracing and the first crops.
    bar = progress_lib.Progress(state.num_batches, "pipeline", enabled=state.show_progress)
    start = time.perf_counter()
    for _ in range(state.num_batches):
        inputs, labels = next(iterator)
        bar.update(1)
    seconds = time.perf_counter() - start
    bar.close()
    patches = state.num_batches * int(inputs.shape[0])
    eval_batches = 0
    if state.results.get("convert", {}).get("num_examples", {}).get("eval"):
        eval_batches = sum(1 for _ in pipeline.build_dataset(state.records_dir, config, split="eval", repeat=False))
    rate = patches / max(seconds, 1e-9)
    labelled = labelled_targets(labels.numpy(), config.channels)
    state.log(
        f"[3] training pipeline ({config.name} preset): crop {layout.crop_size} -> 4 patches of {layout.patch_size} "
        f"(stride {layout.patch_stride}, pad {layout.pad}), {rate:.0f} patches/s; eval pipeline: {eval_batches} "
        f"batch(es) per pass.\n"
        f"    This data has {state.num_z} phase-contrast z slices and labels {', '.join(labelled) or 'none'}. "
        f"Inputs {tuple(inputs.shape)}: the slices mapped onto the network's {config.channels.num_z_values} "
        f"z values, value and presence mask each. Labels {tuple(labels.shape)}: value and mask for each of the "
        f"model's {config.channels.num_heads} heads ({config.channels.num_z_values} reconstructing the input z values, "
        f"{config.channels.num_target_heads} fluorescence channels); the "
        f"{config.channels.num_target_heads - len(labelled)} channels this data does not label are masked out."
    )
    return {
        "labelled_targets": labelled,
        "input_shape": list(inputs.shape),
        "label_shape": list(labels.shape),
        "patches_per_second": round(rate, 1),
        "eval_batches": eval_batches,
    }


def labelled_targets(labels, channels: config_lib.ChannelConfig) -> list[str]:
    """The target channels a batch of labels `[B, O, O, num_heads, 2]` (value, mask) holds anywhere."""
    import numpy as np

    masks = np.asarray(labels)[..., channels.num_input_heads :, 1]
    present = masks.reshape(-1, masks.shape[-1]).any(axis=0)
    return [channel for channel, here in zip(channels.output_target_channels, present) if here]


def _held_out_wells(state: DemoState) -> list[str]:
    """Source folders of the wells `convert` put in the eval split."""
    import json

    with open(os.path.join(state.records_dir, "dataset.json"), encoding="utf-8") as handle:
        description = json.load(handle)
    return [well["directory"] for well in description["wells"] if well["split"] == "eval"]


def deterministic_dataset(data_dir: str, config: config_lib.ExperimentConfig, **options):
    """`isl.data.pipeline.build_dataset` with `deterministic=True` whatever the caller asks (same batches)."""
    from isl.data import pipeline

    options["deterministic"] = True
    return pipeline.build_dataset(data_dir, config, **options)


def train_step(state: DemoState) -> dict:
    """Trains the model on the train shards for `train_steps` steps (resumes if interrupted)."""
    from isl.train import trainer

    start = time.perf_counter()
    # The demo's run is reproducible: --seed fixes the weights, and the training batches come from a deterministic
    # pipeline (the trainer's default lets tf.data reorder elements for speed, which changed the figures from run
    # to run: DAPI Pearson r 0.145 in one run against 0.446 in another).
    config = dataclasses.replace(state.config, train=dataclasses.replace(state.config.train, seed=state.seed))
    result = trainer.train(
        config,
        state.records_dir,
        state.model_dir,
        total_steps=state.train_steps,
        show_progress=state.show_progress,
        log=lambda message: None,
        dataset_fn=deterministic_dataset,
    )
    seconds = time.perf_counter() - start
    loss = result.losses.get("loss")
    eval_loss = result.eval_losses.get("loss")
    state.log(
        f"[4] train: {result.final_step} steps of batch {state.config.train.batch_size} in {seconds:.0f}s; "
        f"training loss {loss:.3f}" + (f", eval loss {eval_loss:.3f}" if eval_loss is not None else "")
        + " (1.0 = a uniform guess over 256 bins, 0 = perfect) -> "
        f"{state.model_dir}"
    )
    return {
        "model_dir": state.model_dir,
        "final_step": result.final_step,
        "loss": loss,
        "eval_loss": eval_loss,
        "seconds": round(seconds, 1),
    }


def predict_step(state: DemoState) -> dict:
    """Predicts the held-out well(s) at full size: median, std and error panels."""
    from isl.infer.kinds import registry

    held_out = _held_out_wells(state)
    if not held_out:
        state.log("[5] predict: no held-out well (use --num_wells >= 2); skipped.")
        return {"wells": []}
    predictor = registry.load_predictor(model_dir=state.model_dir)
    start = time.perf_counter()
    outputs = []
    with atomic.output_directory(state.predictions_dir, overwrite=True) as temporary:
        for directory in held_out:
            result = registry.predict_well(
                predictor,
                directory,
                temporary,
                statistics=("median", "std"),
                progress_enabled=state.show_progress,
            )
            outputs.append(os.path.join(state.predictions_dir, os.path.basename(result["well_dir"])))
    seconds = time.perf_counter() - start
    state.log(
        f"[5] predict: {len(held_out)} held-out well(s), median and standard deviation of each pixel's "
        f"256-bin distribution, plus target/input error panels, in {seconds:.1f}s -> {state.predictions_dir}"
    )
    return {"predictions_dir": state.predictions_dir, "well_dirs": outputs, "seconds": round(seconds, 1)}


def evaluate_step(state: DemoState) -> dict:
    """Scores the held-out predictions: Pearson r per channel and calibration."""
    from isl.eval import evaluate as evaluate_lib

    held_out = _held_out_wells(state)
    if not held_out:
        return {}
    result = evaluate_lib.evaluate(state.predictions_dir, held_out)
    pearson = {row["channel"]: row.get("pearson_r") for row in result["rows"]}
    state.log(
        "[6] evaluate (held-out well): Pearson r of the median prediction against the real label, per channel: "
        + ", ".join(f"{channel} {value:.3f}" for channel, value in pearson.items() if value is not None)
        + f"\n    metrics.json (also MAE, RMSE, PSNR, SSIM and calibration: how often the truth falls inside the "
        f"predicted 50% / 90% intervals) -> {result['files']['metrics_json']}"
    )
    return {"pearson_r": pearson, **result["files"]}


# Steps in order: (name, function).
STEPS: list[tuple[str, Callable[[DemoState], dict]]] = [
    ("generate", generate_step),
    ("convert", convert_step),
    ("pipeline", pipeline_step),
    ("train", train_step),
    ("predict", predict_step),
    ("evaluate", evaluate_step),
]


def run_demo(
    output_dir: str = "isl_demo",
    preset: str = "tiny",
    config: config_lib.ExperimentConfig | None = None,
    steps: list[str] | None = None,
    **options,
) -> dict:
    """Runs the demo steps; returns every step's figures and paths.

    Args:
        output_dir: the demo folder (its raw/ and records/ are replaced).
        preset: the preset used when `config` is None.
        config: an explicit experiment config.
        steps: names of the steps to run (default: all of `STEPS`).
        **options: `DemoState` fields (num_wells, image_size, num_z,
            num_batches, train_steps, seed, show_progress, log).
    """
    state = DemoState(
        output_dir=os.path.abspath(output_dir),
        config=config or presets.get_preset(preset),
        **options,
    )
    wanted = set(steps) if steps else None
    for name, step in STEPS:
        if wanted is None or name in wanted:
            state.results[name] = step(state)
    state.results["output_dir"] = state.output_dir
    return state.results
