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
    config = fast_config("train.optimizer=momentum", "train.learning_rate=0.5", "data.rotate=false")

    def dataset_fn(data_dir, config, split="train", **kwargs):
        if split != "train":
            raise errors.InputError("evaluation is off in this check")
        kwargs.update(deterministic=True, seed=3)
        return pipeline.build_dataset(data_dir, config, split=split, **kwargs)

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
        trainer.train(
            config, records_dir, model_dir, 1, strategy=strategy, show_progress=False,
            dataset_fn=dataset_fn, build_model_fn=start_from_initial,
        )
        model = builder.build_model(config)
        model.load_weights(os.path.join(model_dir, "model.weights.h5"))
        results[name] = [weight.numpy() for weight in model.weights]
        results[name + "_replicas"] = strategy.num_replicas_in_sync
    updates_single = [after - before for after, before in zip(results["default"], initial_weights)]
    updates_mirrored = [after - before for after, before in zip(results["mirrored"], initial_weights)]
    difference = max(float(np.abs(a - b).max()) for a, b in zip(updates_single, updates_mirrored))
    scale = max(float(np.abs(a).max()) for a in updates_single)
    summary = {
        "replicas": results["mirrored_replicas"],
        "max_update_difference": difference,
        "max_update": scale,
        "devices": [device.name for device in tf.config.list_logical_devices("CPU")],
    }
    with open(os.path.join(output_dir, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
