"""Run in a fresh process: one training step on one device vs MirroredStrategy on 2 logical CPUs.

`python -m tests.train.mirrored_check RECORDS_DIR OUTPUT_DIR` splits the CPU
into two logical devices (before TensorFlow initialises them), trains the
tiny model for one step from the same initial weights on the same global
batch under both strategies, and writes `OUTPUT_DIR/result.json` with the
relative differences of the weight updates (all trainable weights, kernels,
biases, BN gamma/beta, BN moving statistics). Both sides use synchronized
(stock, non-fused) batch norm, so the same arithmetic is compared.

Flags: `--stack_by_concatenation` works around the oneDNN bug that swaps
head-bias gradients between heads (see `main`); `--partial_masks` gives the
replicas different numbers of labelled pixels.
"""

from __future__ import annotations

import json
import os
import sys


def main(records_dir: str, output_dir: str) -> None:
    from isl.train import strategy as strategy_lib

    strategy_lib.split_cpu(2)

    import keras
    import numpy as np
    import tensorflow as tf

    from isl import errors
    from isl.data import pipeline
    from isl.model import builder
    from isl.model import layers as model_layers
    from isl.train import step
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
        if "--partial_masks" in sys.argv:
            # Replica 0 (examples 0-3) keeps labels on 2 of 8 output rows only,
            # replica 1 all of them: per-replica labelled-pixel counts differ.
            def drop_rows(index, example):
                inputs, labels = example
                rows = tf.range(tf.shape(labels)[0])
                keep = tf.logical_or(index >= 4, rows < 2)
                mask = labels[..., 1] * tf.cast(keep, labels.dtype)[:, None, None]
                return inputs, tf.stack([labels[..., 0], mask], axis=-1)

            examples = examples.enumerate().map(drop_rows)
        batch = 8 if input_context is None else input_context.get_per_replica_batch_size(8)
        return examples.batch(batch).repeat()

    if "--stack_by_concatenation" in sys.argv:
        # Work-around for a oneDNN graph-rewrite bug (BUILD_NOTES ## Training):
        # when every head's BiasAddGrad and Conv2DBackpropFilter read outputs of
        # ONE Unpack node (the gradient of `ops.stack`), TensorFlow's
        # MklLayoutRewritePass (MergeConv2DBackpropFilterWithBiasAddGrad) can
        # pair a head's filter gradient with another head's bias gradient, so
        # head biases receive each other's gradients, in some traces only.
        # Concatenating [.., 1, C] slices gives each head its own gradient node.
        def concatenate_heads(self, inputs):
            heads = [keras.ops.expand_dims(keras.ops.cast(head, self.compute_dtype), 3) for head in inputs]
            return keras.ops.concatenate(heads, axis=3)

        model_layers.StackHeads.call = concatenate_heads

    initial = builder.build_model(config)
    initial_weights = [weight.numpy() for weight in initial.weights]

    def start_from_initial(config, input_size):
        model = builder.build_model(config, input_size=input_size)
        for weight, value in zip(model.weights, initial_weights):
            weight.assign(value)
        # The same batch-norm arithmetic on both sides: synchronized BN (the
        # Mirrored run's) on one device is the stock, non-fused kernel.
        step.set_synchronized_batch_norm(model)
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
        **{
            f"{suffix}_relative_difference": relative_difference(
                lambda path, suffix=suffix: path in trainable and path.endswith("/" + suffix))
            for suffix in ("bias", "gamma", "beta")
        },
        "devices": [device.name for device in tf.config.list_logical_devices("CPU")],
    }
    with open(os.path.join(output_dir, "result.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle)
    print(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
