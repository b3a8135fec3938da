"""Run in a fresh process: one training step on one device vs MirroredStrategy on 2 logical CPUs.

`python -m tests.train.mirrored_check RECORDS_DIR OUTPUT_DIR` splits the CPU
into two logical devices (before TensorFlow initialises them), trains the
tiny model for one step from the same initial weights on the same global
batch under both strategies, and writes `OUTPUT_DIR/result.json` with the
largest weight-update difference and the size of the update.
"""

from __future__ import annotations

import json
import os
import sys


def main(records_dir: str, output_dir: str) -> None:
    from isl.train import strategy as strategy_lib

    strategy_lib.split_cpu(2)

    import numpy as np
    import tensorflow as tf

    from isl import errors
    from isl.data import pipeline
    from isl.model import builder
    from isl.train import trainer
    from tests.train.conftest import fast_config

    # SGD with momentum: the update is proportional to the gradient, so a
    # wrong loss scaling or batch split would show (Adam's first step would not).
    # Without border padding every mask is 1, so the per-replica loss
    # normalisation equals the global one and the step must match exactly.
    # One tower and few heads keep the (per-replica) tracing short.
    config = fast_config(
        "train.optimizer=momentum", "train.learning_rate=0.5", "data.rotate=false", "data.pad_border=false",
        "channels.num_z_values=2", "channels.target_channels=DAPI_CONFOCAL,MAP2_CONFOCAL",
        "model.num_scales=1", "model.lower_modules_scale_0=3",
    )

    def dataset_fn(data_dir, config, split="train", input_context=None, **kwargs):
        """The same 8 examples forever, in per-replica batches (4 + 4 under Mirrored)."""
        if split != "train":
            raise errors.InputError("evaluation is off in this check")
        examples = pipeline.build_dataset(
            data_dir, config, split="train", seed=3, deterministic=True, batch_size=8
        ).take(1).cache().unbatch()
        batch = 8 if input_context is None else input_context.get_per_replica_batch_size(8)
        return examples.batch(batch).repeat()

    initial = builder.build_model(config)
    initial_weights = [weight.numpy() for weight in initial.weights]

    def start_from_initial(config, input_size):
        model = builder.build_model(config, input_size=input_size)
        for weight, value in zip(model.weights, initial_weights):
            weight.assign(value)
        return model

    results = {}
    for name in ("default", "mirrored"):
        strategy = strategy_lib.make_strategy(name)
        model_dir = os.path.join(output_dir, name)
        result = trainer.train(
            config, records_dir, model_dir, 1, strategy=strategy, show_progress=False,
            dataset_fn=dataset_fn, build_model_fn=start_from_initial,
        )
        results[name + "_loss"] = result.losses["loss"]
        model = builder.build_model(config)
        model.load_weights(os.path.join(model_dir, "model.weights.h5"))
        results[name] = [weight.numpy() for weight in model.weights]
        results[name + "_replicas"] = strategy.num_replicas_in_sync
    trainable = {weight.path for weight in initial.trainable_weights}

    def relative_difference(select) -> float:
        """||update_mirrored - update_single|| / ||update_single|| over the selected weights."""
        difference = total = 0.0
        for weight, before, single, mirrored in zip(
            initial.weights, initial_weights, results["default"], results["mirrored"]
        ):
            if select(weight.path):
                difference += float(np.sum(((mirrored - before) - (single - before)) ** 2))
                total += float(np.sum((single - before) ** 2))
        return float(np.sqrt(difference / total))

    summary = {
        "replicas": results["mirrored_replicas"],
        "loss_default": results["default_loss"],
        "loss_mirrored": results["mirrored_loss"],
        "kernel_relative_difference": relative_difference(
            lambda path: path in trainable and path.endswith("/kernel")),
        "trainable_relative_difference": relative_difference(lambda path: path in trainable),
        "moving_statistics_relative_difference": relative_difference(lambda path: path not in trainable),
        "devices": [device.name for device in tf.config.list_logical_devices("CPU")],
    }
    with open(os.path.join(output_dir, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
