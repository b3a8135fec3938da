"""Decoded wells -> training and evaluation examples (the parser of the decoder / parser split).

`isl.data.decoder` turns a serialized record into tensors and knows only the
record format; this module turns those tensors into what the network trains
on, and knows the crops, augmentation and labels (isl_reference.md §3.5,
§3.6). `isl.data.pipeline` chains them: files -> decode -> parse -> batch.

Parsing has two stages, because some of it runs per batch (one rotation per
batch, the z mapping as one matrix product):

1. per well, `Parser.train_patches` (a uniformly random crop of the
   zero-padded well, a left-right flip with p = 0.5) or
   `Parser.eval_patches` (the fixed crop grid, no augmentation) cut 2 x 2
   patches of the network input size per crop, still uint16;
2. per batch, `Parser.finish_batch` rotates (training), converts to float,
   maps the source z slices to the network's z values, corrupts (training)
   and builds the labels:

   * inputs `[batch, P, P, 2 * num_z_values]` float32, z-major value/mask pairs;
   * labels `[batch, O, O, num_heads, 2]` float32, value and mask per head in
     `ChannelConfig.head_names` order.

`PatchLayout` says where the patches come from (crop, patch and output
sizes, padding), derived once from the config and `isl.model.geometry`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl.data import assemble
from isl.data import augment
from isl.data.layout import PatchLayout, patch_layout  # noqa: F401 (re-exported: the layout is owned there)
from isl.model import unet_regression


def eval_crop_offsets(height: Any, width: Any, layout: PatchLayout) -> tf.Tensor:
    """Evaluation crops: a centred grid of non-overlapping crops, in padded coordinates.

    The padded image is `height + 2 * pad` by `width + 2 * pad`; it holds
    max(1, padded // crop) crops along each axis, centred. `height` and
    `width` are ints or int32 scalar tensors (inside the pipeline's graph).

    Returns:
        int32 `[num_crops, 2]` (row, column) offsets, row-major.
    """
    axes = []
    for size in (height, width):
        padded = tf.cast(size, tf.int32) + 2 * layout.pad
        count = tf.maximum(1, padded // layout.crop_size)
        start = tf.maximum(0, (padded - count * layout.crop_size) // 2)
        axes.append(start + tf.range(count) * layout.crop_size)
    rows, columns = tf.meshgrid(axes[0], axes[1], indexing="ij")
    return tf.stack([tf.reshape(rows, [-1]), tf.reshape(columns, [-1])], axis=1)


def selection_table(max_source_z: int, num_z_values: int) -> np.ndarray:
    """`[max_source_z + 1, max_source_z + 1, 2 * num_z_values]` float32 0/1 matrices.

    For a stack of n source slices padded to `max_source_z` channels plus one
    presence channel (index max_source_z), `x @ table[n]` maps the slices to
    the network's z values (`assemble.z_slice_indices`) and interleaves value
    and mask channels in one exact pass (each output is one input times 1).
    """
    indices = assemble.z_index_table(max_source_z, num_z_values)
    table = np.zeros((max_source_z + 1, max_source_z + 1, 2 * num_z_values), np.float32)
    for count in range(1, max_source_z + 1):
        for z_index, source in enumerate(indices[count]):
            table[count, source, 2 * z_index] = 1.0
            table[count, max_source_z, 2 * z_index + 1] = 1.0
    return table


class Parser:
    """Decoded wells (`isl.data.decoder.decode`) -> patches -> (inputs, labels) batches.

    Args:
        config: the experiment config (channels, data augmentation settings).
        layout: `patch_layout(config)`.
        max_source_z: the dataset's largest z-stack (dataset.json); every
            stack is zero-padded to it so wells of any depth batch together.
    """

    def __init__(self, config: config_lib.ExperimentConfig, layout: PatchLayout, max_source_z: int):
        self.config = config
        self.layout = layout
        self.channels = config.channels
        self.max_source_z = max_source_z
        self.target_vocabulary = tf.constant(list(config.channels.target_channels) or [""], tf.string)
        self.num_targets = len(config.channels.target_channels)
        self.input_modalities = tf.constant(list(config.channels.input_modalities) or [""], tf.string)
        self.selection = tf.constant(selection_table(max_source_z, config.channels.num_z_values))
        # The hybrid's embedding features per pixel (model.hybrid_features), appended to the network input.
        self.embedding_size = unet_regression.input_embedding_size(config.model)

    # -- stage 1: one well -> uint16 patches ---------------------------------

    def train_patches(self, decoded: dict, seed: tf.Tensor) -> dict:
        """The patches of one random crop of a well, flipped left-right with p = 0.5 (`data.flip`).

        Args:
            decoded: one well from `decoder.decode`.
            seed: `[2]` int64, this example's seed (offsets and flip derive from it).

        Returns:
            The `patches` dict, `[4, ...]` tensors.
        """
        return self.patches(decoded, *self.train_crop(decoded, seed))

    def train_crop(self, decoded: dict, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(offset_y, offset_x, flip) of an example's uniformly random crop of the padded well.

        Args:
            decoded: the well's "height" and "width" (int32 scalars).
            seed: `[2]` int64, this example's seed.
        """
        layout = self.layout
        size = layout.crop_size
        max_y = tf.maximum(decoded["height"] + 2 * layout.pad - size, 0)
        max_x = tf.maximum(decoded["width"] + 2 * layout.pad - size, 0)
        offset_y = tf.random.stateless_uniform([], augment.sub_seed(seed, 0), 0, max_y + 1, tf.int32)
        offset_x = tf.random.stateless_uniform([], augment.sub_seed(seed, 1), 0, max_x + 1, tf.int32)
        flip = augment.random_flip(augment.sub_seed(seed, 2)) if self.config.data.flip else tf.constant(False)
        return offset_y, offset_x, flip

    def eval_patches(self, decoded: dict) -> tf.data.Dataset:
        """The patches of every crop of the fixed evaluation grid (`eval_crop_offsets`), unflipped.

        Returns:
            A dataset of `patches` dicts (`[4, ...]` tensors), one per crop, in grid order.
        """
        grid = eval_crop_offsets(decoded["height"], decoded["width"], self.layout)
        offsets = tf.data.Dataset.from_tensor_slices(grid)
        return offsets.map(lambda offset: self.patches(decoded, offset[0], offset[1], tf.constant(False)))

    def patches(self, decoded: dict, offset_y: tf.Tensor, offset_x: tf.Tensor, flip: tf.Tensor) -> dict:
        """The 2 x 2 patches of one crop of a whole decoded well (`window_patches` on its windows)."""
        height, width = decoded["height"], decoded["width"]
        inputs = self._window(decoded["inputs"], offset_y, offset_x, height, width)
        targets = self._window(decoded["targets"], offset_y, offset_x, height, width)
        embedding = None
        if self.embedding_size:
            embedding = self._window(tf.bitcast(decoded["embedding"], tf.uint16), offset_y, offset_x, height, width)
        return self.window_patches(decoded, inputs, targets, offset_y, offset_x, flip, embedding)

    def window_patches(
        self,
        decoded: dict,
        inputs: tf.Tensor,
        targets: tf.Tensor,
        offset_y: tf.Tensor,
        offset_x: tf.Tensor,
        flip: tf.Tensor,
        embedding: tf.Tensor | None = None,
    ) -> dict:
        """The 2 x 2 patches of one crop, still uint16 (converted per batch), from the crop's pixels alone.

        Args:
            decoded: the well's metadata as `decoder.decode` gives it (the
                pixel entries are not read): "height", "width",
                "num_source_z", "modality", "input_max_value",
                "target_channels", "target_max_values".
            inputs: `[crop, crop, Z]` uint16, the crop of the zero-padded
                well's z-stack at (offset_y, offset_x), zero outside the image.
            targets: `[crop, crop, T]` uint16, the same crop of its targets.
            offset_y, offset_x: the crop's offset in padded coordinates.
            flip: flip left-right.
            embedding: a hybrid's `[crop, crop, E]` embedding window (float16
                bit patterns as uint16, zero outside the image), or None.

        Returns a dict of `[4, ...]` tensors: "inputs" `[P, P, max_source_z + 1]`
        uint16 (source slices zero-padded to max_source_z, then the presence
        mask as the last channel), "targets" `[O, O, T]` uint16 in vocabulary
        order, "valid_out" `[O, O]` uint8, "num_source_z", "input_scale",
        "target_scale" `[T]` and "target_present" `[T]`; a hybrid's also
        "embedding" `[P, P, E]` (uint16 bit patterns), cut as the inputs.
        """
        num_z = decoded["num_source_z"]
        tf.debugging.assert_less_equal(
            num_z, self.max_source_z, message="a well has more z slices than dataset.json's max_source_z"
        )
        present, source_index, target_scale = self._vocabulary_columns(decoded)
        inputs, targets, valid = self._crop_well(decoded, inputs, targets, offset_y, offset_x, source_index)
        inputs, targets, valid = augment.flip_left_right([inputs, targets, valid], flip)
        patch_inputs, patch_targets, patch_valid_out = self._cut(inputs, targets, valid)
        count = self.layout.patches_per_crop
        extra = {}
        if self.embedding_size:
            if embedding is None:
                raise ValueError("A hybrid parser needs each crop's embedding window.")
            embedding.set_shape([self.layout.crop_size, self.layout.crop_size, self.embedding_size])
            (embedding,) = augment.flip_left_right([embedding], flip)
            size = self.layout.patch_size
            extra["embedding"] = tf.stack([embedding[row : row + size, column : column + size]
                                           for row, column in self.layout.patch_offsets])
        return {
            **extra,
            "inputs": patch_inputs,
            "targets": patch_targets,
            "valid_out": tf.cast(patch_valid_out, tf.uint8),
            "num_source_z": tf.fill([count], num_z),
            "input_scale": tf.fill([count], decoded["input_max_value"]),
            "target_scale": tf.tile(target_scale[None], [count, 1]),
            "target_present": tf.tile(tf.cast(present, tf.float32)[None], [count, 1]),
        }

    def _vocabulary_columns(self, decoded: dict) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Where each vocabulary target sits in the well.

        Returns:
            present `[T]` bool; source_index `[T]` int32, the well's column of
            each target (its channel count, an all-zero column, when missing);
            target_scale `[T]` float32, the target's maximum value (1 when missing).
        """
        example_channels = decoded["target_channels"]
        matches = tf.equal(self.target_vocabulary[:, None], example_channels[None, :])
        present = tf.reduce_any(matches, axis=1)[: self.num_targets]
        source_index = tf.where(
            present,
            tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)[: self.num_targets],
            tf.shape(example_channels)[0],
        )
        max_values = tf.concat([decoded["target_max_values"], [1.0]], axis=0)
        return present, source_index, tf.gather(max_values, source_index)

    def _crop_well(
        self,
        decoded: dict,
        inputs: tf.Tensor,
        targets: tf.Tensor,
        offset_y: tf.Tensor,
        offset_x: tf.Tensor,
        source_index: tf.Tensor,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One crop of the zero-padded well, from its `[crop, crop, Z]` and `[crop, crop, T]` windows.

        Returns:
            inputs `[crop, crop, max_source_z + 1]` uint16 (zero when the
            well's modality is not an input modality), targets
            `[crop, crop, T]` uint16 in vocabulary order, valid `[crop, crop, 1]`
            uint16 (1 on image pixels, 0 on padding).
        """
        layout = self.layout
        num_z = decoded["num_source_z"]
        input_present = tf.cast(tf.reduce_any(tf.equal(self.input_modalities, decoded["modality"])), tf.uint16)
        valid = self._valid_window(offset_y, offset_x, decoded["height"], decoded["width"])
        missing_z = tf.zeros(tf.stack([layout.crop_size, layout.crop_size, self.max_source_z - num_z]), tf.uint16)
        inputs = tf.concat([inputs * input_present, missing_z, valid * input_present], axis=2)
        inputs.set_shape([layout.crop_size, layout.crop_size, self.max_source_z + 1])
        targets = tf.concat([targets, tf.zeros_like(targets[:, :, :1])], axis=2)
        targets = tf.gather(targets, source_index, axis=2)
        targets.set_shape([layout.crop_size, layout.crop_size, self.num_targets])
        return inputs, targets, valid

    def _valid_window(self, offset_y: tf.Tensor, offset_x: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
        """`[crop, crop, 1]` uint16: 1 where the crop at (offset_y, offset_x) of the padded image is image."""
        size, pad = self.layout.crop_size, self.layout.pad
        rows = tf.range(size) + tf.cast(offset_y, tf.int32) - pad
        columns = tf.range(size) + tf.cast(offset_x, tf.int32) - pad
        inside_rows = (rows >= 0) & (rows < tf.cast(height, tf.int32))
        inside_columns = (columns >= 0) & (columns < tf.cast(width, tf.int32))
        valid = tf.cast(inside_rows[:, None] & inside_columns[None, :], tf.uint16)[:, :, None]
        valid.set_shape([size, size, 1])
        return valid

    def _window(
        self, image: tf.Tensor, offset_y: tf.Tensor, offset_x: tf.Tensor, height: tf.Tensor, width: tf.Tensor
    ) -> tf.Tensor:
        """`[crop, crop, C]` window at (offset_y, offset_x) of the zero-padded image."""
        size, pad = self.layout.crop_size, self.layout.pad
        top, left = offset_y - pad, offset_x - pad
        y0, x0 = tf.maximum(top, 0), tf.maximum(left, 0)
        y1 = tf.maximum(tf.minimum(top + size, height), y0)
        x1 = tf.maximum(tf.minimum(left + size, width), x0)
        region = image[y0:y1, x0:x1]
        before_y, before_x = y0 - top, x0 - left
        padding = [[before_y, size - before_y - (y1 - y0)], [before_x, size - before_x - (x1 - x0)]]
        padding += [[0, 0]] * (image.shape.rank - 2)
        cropped = tf.pad(region, padding)
        cropped.set_shape([size, size] + image.shape.as_list()[2:])
        return cropped

    def _cut(self, inputs: tf.Tensor, targets: tf.Tensor, valid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """`[4, P, P, ...]` input patches and the `[4, O, O, ...]` centres of targets and valid."""
        size, out, border = self.layout.patch_size, self.layout.output_size, self.layout.border
        patch_inputs, patch_targets, patch_valid_out = [], [], []
        for row, column in self.layout.patch_offsets:
            patch_inputs.append(inputs[row : row + size, column : column + size])
            centre_row, centre_column = row + border, column + border
            patch_targets.append(targets[centre_row : centre_row + out, centre_column : centre_column + out])
            patch_valid_out.append(valid[centre_row : centre_row + out, centre_column : centre_column + out, 0])
        return tf.stack(patch_inputs), tf.stack(patch_targets), tf.stack(patch_valid_out)

    # -- stage 2: a batch of patches -> (inputs, labels) ---------------------

    def finish_batch(self, batch: dict, seed: tf.Tensor, training: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """Rotation, conversion, z mapping, corruption, then (inputs, labels) for one batch.

        Args:
            batch: `patches` dicts batched: "inputs" `[B, P, P, max_source_z + 1]` uint16, ...
            seed: `[2]` int64, this batch's seed (rotation and corruption derive from it).
            training: rotate (`data.rotate`) and corrupt (`data.corrupt_*`).

        Returns:
            inputs `[B, P, P, 2 * num_z_values (+ E)]` (a hybrid's embedding last) and labels
            `[B, O, O, num_heads, 2]`, float32.
        """
        data = self.config.data
        if training and data.rotate:
            batch = _rotated(batch, augment.sub_seed(seed, 0), data.rotate_per_example)
        inputs = self._network_inputs(batch)
        if training:
            inputs = augment.corrupt(
                inputs,
                augment.sub_seed(seed, 1),
                offset_std=data.corrupt_offset_std,
                multiplier_std=data.corrupt_multiplier_std,
                noise_std=data.corrupt_noise_std,
            )
        border, out = self.layout.border, self.layout.output_size
        centre = inputs[:, border : border + out, border : border + out]
        shape = tf.shape(inputs)
        input_labels = tf.reshape(centre, tf.stack([shape[0], out, out, self.channels.num_z_values, 2]))
        labels = tf.concat([input_labels, _target_labels(batch, self.channels)], axis=3)
        if self.embedding_size:  # The hybrid's embedding: after the corruption, which models the light only.
            embedding = tf.cast(tf.bitcast(batch["embedding"], tf.float16), tf.float32)
            inputs = tf.concat([inputs, embedding], axis=3)
        return inputs, labels

    def _network_inputs(self, batch: dict) -> tf.Tensor:
        """`[B, P, P, 2 * num_z_values]` float32: values over their type's maximum, mapped to the network's z."""
        stack = batch["inputs"]
        shape = tf.shape(stack)
        channels_in = stack.shape[-1]
        # Divide the values by their type's maximum (exactly as the released reader), the mask by 1.
        divisor = tf.concat(
            [tf.tile(batch["input_scale"][:, None], [1, channels_in - 1]), tf.ones_like(batch["input_scale"])[:, None]],
            axis=1,
        )
        values = tf.cast(stack, tf.float32) / divisor[:, None, None, :]
        matrices = tf.gather(self.selection, batch["num_source_z"])
        flat = tf.reshape(values, tf.stack([shape[0], shape[1] * shape[2], channels_in]))
        num_features = 2 * self.channels.num_z_values
        return tf.reshape(tf.linalg.matmul(flat, matrices), tf.stack([shape[0], shape[1], shape[2], num_features]))


def _rotated(batch: dict, seed: tf.Tensor, per_example: bool) -> dict:
    """The batch with inputs, targets and valid_out rotated by k * 90 degrees, one k per batch or per patch."""
    keys = ("inputs", "targets", "valid_out") + (("embedding",) if "embedding" in batch else ())
    if per_example:
        ks = augment.random_rotations(seed, tf.shape(batch["inputs"])[0])
        rotated = augment.rotate_examples([batch[key] for key in keys], ks)
    else:
        rotated = augment.rotate_batch([batch[key] for key in keys], augment.random_rotation(seed))
    return dict(batch, **dict(zip(keys, rotated)))


def _target_labels(batch: dict, channels: config_lib.ChannelConfig) -> tf.Tensor:
    """`[B, O, O, T + S, 2]` target labels, synthetic channels included."""
    target_scale = tf.where(batch["target_present"] > 0, batch["target_scale"], 1.0)[:, None, None, :]
    target_values = tf.cast(batch["targets"], tf.float32) / target_scale
    target_masks = tf.cast(batch["valid_out"], tf.float32)[..., None] * batch["target_present"][:, None, None, :]
    per_channel = {
        name: (target_values[..., index], target_masks[..., index])
        for index, name in enumerate(channels.target_channels)
    }
    for synthetic in channels.active_synthetic_channels:
        sources = [per_channel[source] for source in synthetic.sources]
        value = tf.add_n([source[0] for source in sources]) / float(len(sources))
        product = sources[0][1]
        for source in sources[1:]:
            product = product * source[1]
        mask = tf.sqrt(product) if len(sources) == 2 else tf.pow(product, 1.0 / len(sources))
        per_channel[synthetic.name] = (value, mask)
    names = channels.output_target_channels
    if not names:
        shape = tf.shape(target_values)
        return tf.zeros(tf.stack([shape[0], shape[1], shape[2], 0, 2]))
    return tf.stack([tf.stack([per_channel[name][0], per_channel[name][1]], axis=-1) for name in names], axis=3)
