"""The tf.data input pipeline: TFRecord shards -> (inputs, labels) batches.

Training (isl_reference.md §3.5, §3.6), per example (one well):

1. decode the well (uint16, channels last);
2. zero-pad by the network border (mask 0), as the paper's TFRecord path did,
   when `data.pad_border` (otherwise the PNG path: border pixels are never
   trained as centres), and take a uniformly random crop (520 in the paper);
3. map the source z slices to the network's z values (`isl.data.assemble`);
4. flip left-right with p = 0.5 (per example);
5. cut 2 x 2 patches of the network input size at stride `patch_stride`
   ({0, 256} in the paper: 4 patches of 250 per 520 crop) and keep the centre
   `output_size` square of the targets;

then patches are shuffled (buffer `data.shuffle_buffer`, 64 in the paper),
batched (global batch 16, or the per-replica share), rotated by one k * 90
degrees per batch (or per patch with `data.rotate_per_example`), optionally corrupted, and turned into

* inputs `[batch, P, P, 2 * num_z_values]` float32, z-major value/mask pairs;
* labels `[batch, O, O, num_heads, 2]` float32, value and mask per head in
  `ChannelConfig.head_names` order: the z-mapped (possibly corrupted)
  transmitted light at the centre for the input heads, then the targets in
  `output_target_channels` order (missing ones zero with mask 0, synthetic
  ones computed from their sources).

P and O come from `isl.model.geometry`. Larger outputs (O = 8 + 16k) grow P;
the crop then grows to `patch_stride + P` if needed so each crop still
gives 2 x 2 patches.

Evaluation uses a fixed grid of crops per well (`eval_crop_offsets`), no
augmentation, and a fixed order.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import random
import struct
from typing import Any

import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.data import assemble
from isl.data import augment
from isl.data import decoder
from isl.data import schema
from isl.model import geometry as geometry_lib

@dataclasses.dataclass(frozen=True)
class PatchLayout:
    """Where patches come from, derived from the config and the network geometry.

    Attributes:
        crop_size: side of each crop (520 in the paper).
        patch_size: network input side P (250 in the paper).
        patch_stride: offset between the 2 x 2 patches of a crop (256).
        output_size: network output side O (8); the label patch side.
        border: (P - O) / 2 (121).
        pad: zero padding added around each image (border, or 0).
    """

    crop_size: int
    patch_size: int
    patch_stride: int
    output_size: int
    border: int
    pad: int

    @property
    def patch_offsets(self) -> tuple[tuple[int, int], ...]:
        """(row, column) of the patches inside a crop."""
        stride = self.patch_stride
        return ((0, 0), (0, stride), (stride, 0), (stride, stride))

    @property
    def patches_per_crop(self) -> int:
        return len(self.patch_offsets)


def patch_layout(config: config_lib.ExperimentConfig) -> PatchLayout:
    """The patch layout for a config.

    Raises:
        InputError: when the model geometry is invalid for its output size.
    """
    try:
        geometry = geometry_lib.geometry(config.model)
    except ValueError as error:
        raise errors.InputError(f"model geometry: {error}") from None
    stride = config.data.patch_stride
    crop = max(config.data.crop_size, stride + geometry.input_size)
    return PatchLayout(
        crop_size=crop,
        patch_size=geometry.input_size,
        patch_stride=stride,
        output_size=geometry.output_size,
        border=geometry.border,
        pad=geometry.border if config.data.pad_border else 0,
    )


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


def read_description(data_dir: str) -> dict | None:
    """`dataset.json` of a converted dataset, or None when absent."""
    path = os.path.join(data_dir, schema.DATASET_JSON)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise errors.InputError(f"{path}: unreadable ({error}).") from None


def list_shards(data_dir: str, split: str) -> list[str]:
    """The split's non-empty shards, sorted.

    Raises:
        InputError: when there are none.
    """
    if split not in schema.SPLITS:
        raise errors.InputError(f"split must be one of {schema.SPLITS}. Received: {split!r}")
    if not os.path.isdir(data_dir):
        raise errors.InputError(f"{data_dir}: not a folder (expected the output of 'isl convert').")
    paths = sorted(glob.glob(os.path.join(data_dir, schema.shard_pattern(split))))
    paths = [path for path in paths if os.path.getsize(path) > 0]
    for path in paths:
        check_shard(path)
    if not paths:
        raise errors.InputError(
            f"{data_dir}: no non-empty {split} shards ({schema.shard_pattern(split)}); "
            f"run 'isl convert' first{' with held-out wells (--eval_every / --eval_wells)' if split == 'eval' else ''}."
        )
    return paths


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        table.append(value)
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_shard(path: str) -> int:
    """Walks a TFRecord file's record headers; returns the number of records.

    Cheap (one small read per record): finds a truncated file or a damaged
    length field, not a flipped bit inside a record's data (the pipeline's
    CRC check finds that when it reads the record).

    Raises:
        InputError: naming the file, the offset and what to do.
    """
    size = os.path.getsize(path)
    count = position = 0
    with open(path, "rb") as handle:
        while position < size:
            header = handle.read(12)
            problem = None
            if len(header) < 12:
                problem = f"truncated record header at byte {position}"
            else:
                (length,) = struct.unpack("<Q", header[:8])
                (length_crc,) = struct.unpack("<I", header[8:])
                if _masked_crc32c(header[:8]) != length_crc:
                    problem = f"corrupted record length at byte {position}"
                elif position + 16 + length > size:
                    problem = f"truncated: record {count} at byte {position} needs {16 + length} bytes, {size - position} left"
            if problem:
                raise errors.InputError(
                    f"{path}: damaged TFRecord shard ({problem}). Run 'isl convert' again to rewrite the dataset."
                )
            position += 16 + length
            count += 1
            handle.seek(position)
    return count


def _check_description(description: dict | None, data_dir: str, split: str, config: config_lib.ExperimentConfig, layout: PatchLayout) -> None:
    if not description:
        return
    modalities = set(description.get("channels", {}).get("input_modalities", []))
    if modalities and not modalities & set(config.channels.input_modalities):
        raise errors.InputError(
            f"{data_dir}: its transmitted light ({', '.join(sorted(modalities))}) is not among the config's "
            f"input modalities ({', '.join(config.channels.input_modalities)}); every input would be masked out."
        )
    # Evaluation crops of small images (a held-out region of a well, `isl
    # convert --eval_region`) are zero-padded with mask 0, so the pixels
    # beyond the image carry no loss; training crops must fit (§3.5).
    small = [
        f"{well['name']} ({well['height']}x{well['width']})"
        for well in description.get("wells", [])
        if split == "train" and well.get("split") == split
        and min(well["height"], well["width"]) + 2 * layout.pad < layout.crop_size
    ]
    if small:
        raise errors.InputError(
            f"{data_dir}: image(s) smaller than the {layout.crop_size}-px crop after {layout.pad}-px padding: "
            f"{', '.join(small[:5])}. Use a smaller data.crop_size or larger images."
        )


def check_dataset(data_dir: str, config: config_lib.ExperimentConfig, splits: tuple[str, ...] = ("train", "eval")) -> None:
    """Checks, without reading any example, that `build_dataset` can serve `splits`.

    Non-empty, structurally whole shards of each split (`check_shard`), a
    readable `dataset.json` and, for training, images large enough for the
    config's crop. Cheap; meant to run before long work (a search) starts.

    Raises:
        InputError: naming the folder or file and what to do.
    """
    layout = patch_layout(config)
    for split in splits:
        list_shards(data_dir, split)
    description = read_description(data_dir)
    if description is None:
        raise errors.InputError(
            f"{data_dir}: no {schema.DATASET_JSON}; the folder must be the output of 'isl convert'."
        )
    for split in splits:
        _check_description(description, data_dir, split, config, layout)


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


class _PatchMaker:
    """In-graph crop, flip and patch extraction for one decoded well."""

    def __init__(self, config: config_lib.ExperimentConfig, layout: PatchLayout, max_source_z: int):
        self.layout = layout
        self.channels = config.channels
        self.max_source_z = max_source_z
        self.target_vocabulary = tf.constant(list(config.channels.target_channels) or [""], tf.string)
        self.num_targets = len(config.channels.target_channels)
        self.input_modalities = tf.constant(list(config.channels.input_modalities) or [""], tf.string)

    def _crop(self, image: tf.Tensor, offset_y: tf.Tensor, offset_x: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
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

    def patches(self, decoded: dict, offset_y: tf.Tensor, offset_x: tf.Tensor, flip: tf.Tensor) -> dict:
        """The 2 x 2 patches of one crop, still uint16 (converted per batch).

        Returns a dict of `[4, ...]` tensors: "inputs" `[P, P, max_source_z + 1]`
        uint16 (source slices zero-padded to max_source_z, then the presence
        mask as the last channel), "targets" `[O, O, T]` uint16 in vocabulary
        order, "valid_out" `[O, O]` uint8, "num_source_z", "input_scale",
        "target_scale" `[T]` and "target_present" `[T]`.
        """
        layout = self.layout
        height, width = decoded["height"], decoded["width"]
        num_z = decoded["num_source_z"]
        tf.debugging.assert_less_equal(
            num_z, self.max_source_z, message="a well has more z slices than dataset.json's max_source_z"
        )
        # Targets in vocabulary order: column T_example is an all-zero column for missing channels.
        example_channels = decoded["target_channels"]
        matches = tf.equal(self.target_vocabulary[:, None], example_channels[None, :])
        present = tf.reduce_any(matches, axis=1)[: self.num_targets]
        source_index = tf.where(
            present,
            tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)[: self.num_targets],
            tf.shape(example_channels)[0],
        )
        max_values = tf.concat([decoded["target_max_values"], [1.0]], axis=0)
        target_scale = tf.gather(max_values, source_index)
        input_present = tf.cast(tf.reduce_any(tf.equal(self.input_modalities, decoded["modality"])), tf.uint16)

        inputs = self._crop(decoded["inputs"], offset_y, offset_x, height, width)
        valid = self._crop(tf.ones(tf.stack([height, width, 1]), tf.uint16), offset_y, offset_x, height, width)
        inputs = tf.concat(
            [inputs * input_present, tf.zeros(tf.stack([layout.crop_size, layout.crop_size, self.max_source_z - num_z]), tf.uint16), valid * input_present],
            axis=2,
        )
        inputs.set_shape([layout.crop_size, layout.crop_size, self.max_source_z + 1])
        targets = self._crop(decoded["targets"], offset_y, offset_x, height, width)
        targets = tf.concat([targets, tf.zeros_like(targets[:, :, :1])], axis=2)
        targets = tf.gather(targets, source_index, axis=2)
        targets.set_shape([layout.crop_size, layout.crop_size, self.num_targets])
        inputs, targets, valid = augment.flip_left_right([inputs, targets, valid], flip)

        size, out, border = layout.patch_size, layout.output_size, layout.border
        patch_inputs, patch_targets, patch_valid_out = [], [], []
        for row, column in layout.patch_offsets:
            patch_inputs.append(inputs[row : row + size, column : column + size])
            centre_row, centre_column = row + border, column + border
            patch_targets.append(targets[centre_row : centre_row + out, centre_column : centre_column + out])
            patch_valid_out.append(valid[centre_row : centre_row + out, centre_column : centre_column + out, 0])
        count = layout.patches_per_crop
        return {
            "inputs": tf.stack(patch_inputs),
            "targets": tf.stack(patch_targets),
            "valid_out": tf.cast(tf.stack(patch_valid_out), tf.uint8),
            "num_source_z": tf.fill([count], num_z),
            "input_scale": tf.fill([count], decoded["input_max_value"]),
            "target_scale": tf.tile(target_scale[None], [count, 1]),
            "target_present": tf.tile(tf.cast(present, tf.float32)[None], [count, 1]),
        }


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


def _finish_batch(
    batch: dict,
    seed: tf.Tensor,
    config: config_lib.ExperimentConfig,
    layout: PatchLayout,
    selection: tf.Tensor,
    training: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotation, conversion, z mapping, corruption, then (inputs, labels) for one batch."""
    data = config.data
    if training and data.rotate:
        keys = ("inputs", "targets", "valid_out")
        if data.rotate_per_example:
            ks = augment.random_rotations(augment.sub_seed(seed, 0), tf.shape(batch["inputs"])[0])
            rotated = augment.rotate_examples([batch[key] for key in keys], ks)
        else:
            k = augment.random_rotation(augment.sub_seed(seed, 0))
            rotated = augment.rotate_batch([batch[key] for key in keys], k)
        batch = dict(batch, **dict(zip(keys, rotated)))
    stack = batch["inputs"]
    shape = tf.shape(stack)
    channels_in = stack.shape[-1]
    # Divide the values by their type's maximum (exactly as the released reader), the mask by 1.
    divisor = tf.concat(
        [tf.tile(batch["input_scale"][:, None], [1, channels_in - 1]), tf.ones_like(batch["input_scale"])[:, None]],
        axis=1,
    )
    values = tf.cast(stack, tf.float32) / divisor[:, None, None, :]
    matrices = tf.gather(selection, batch["num_source_z"])
    flat = tf.reshape(values, tf.stack([shape[0], shape[1] * shape[2], channels_in]))
    num_features = 2 * config.channels.num_z_values
    inputs = tf.reshape(tf.linalg.matmul(flat, matrices), tf.stack([shape[0], shape[1], shape[2], num_features]))
    if training:
        inputs = augment.corrupt(
            inputs,
            augment.sub_seed(seed, 1),
            offset_std=data.corrupt_offset_std,
            multiplier_std=data.corrupt_multiplier_std,
            noise_std=data.corrupt_noise_std,
        )
    border, out = layout.border, layout.output_size
    centre = inputs[:, border : border + out, border : border + out]
    input_labels = tf.reshape(centre, tf.stack([shape[0], out, out, config.channels.num_z_values, 2]))
    labels = tf.concat([input_labels, _target_labels(batch, config.channels)], axis=3)
    return inputs, labels


def build_dataset(
    data_dir: str,
    config: config_lib.ExperimentConfig,
    split: str = "train",
    input_context: tf.distribute.InputContext | None = None,
    seed: int | None = None,
    deterministic: bool = False,
    repeat: bool = True,
    batch_size: int | None = None,
) -> tf.data.Dataset:
    """Builds the training or evaluation pipeline over a converted dataset.

    Args:
        data_dir: the output folder of `isl convert`.
        config: the experiment config (channels, model geometry, data, train.batch_size).
        split: "train" (random crops, augmentation, shuffling) or "eval"
            (fixed crop grid, no augmentation, fixed order).
        input_context: from `strategy.distribute_datasets_from_function`;
            shards the input and gives the per-replica batch.
        seed: seeds every random choice; None draws one (or uses
            `config.train.seed` when `deterministic`).
        deterministic: fix the element order (slower) so a seed reproduces
            the exact batches.
        repeat: repeat forever (training); False makes one pass.
        batch_size: overrides the batch (default: per-replica share of
            `config.train.batch_size`, 16 in the paper).

    Returns:
        A dataset of (inputs `[B, P, P, 2 * num_z_values]`,
        labels `[B, O, O, num_heads, 2]`), float32. Training batches are
        always full; a final partial evaluation batch is kept when not repeating.

    Raises:
        InputError: for a missing or unusable dataset.
    """
    layout = patch_layout(config)
    training = split == "train"
    files = list_shards(data_dir, split)
    description = read_description(data_dir)
    _check_description(description, data_dir, split, config, layout)
    if description is None:
        raise errors.InputError(
            f"{data_dir}: no {schema.DATASET_JSON}; the folder must be the output of 'isl convert'."
        )
    max_source_z = int(description["max_source_z"])
    if batch_size is None:
        batch_size = config.train.batch_size
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
    if batch_size < 1:
        raise errors.InputError(f"batch size must be >= 1. Received: {batch_size}")
    if seed is None:
        seed = config.train.seed if deterministic else random.SystemRandom().randrange(2**31)
    pipeline_id, num_pipelines = 0, 1
    if input_context is not None:
        pipeline_id, num_pipelines = input_context.input_pipeline_id, input_context.num_input_pipelines
    base_seed = int(seed) * 1009 + pipeline_id

    maker = _PatchMaker(config, layout, max_source_z)
    selection = tf.constant(selection_table(max_source_z, config.channels.num_z_values))
    dataset = tf.data.Dataset.from_tensor_slices(files)
    shard_records = False
    if num_pipelines > 1:
        if len(files) >= num_pipelines:
            dataset = dataset.shard(num_pipelines, pipeline_id)
        else:
            shard_records = True
    if training:
        dataset = dataset.shuffle(len(files), seed=base_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 8),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)

    if training:

        def crop_example(index: tf.Tensor, serialized: tf.Tensor) -> dict:
            example_seed = tf.stack([tf.constant(base_seed, tf.int64), index])
            decoded = decoder.decode(serialized)
            size = layout.crop_size
            max_y = tf.maximum(decoded["height"] + 2 * layout.pad - size, 0)
            max_x = tf.maximum(decoded["width"] + 2 * layout.pad - size, 0)
            offset_y = tf.random.stateless_uniform([], augment.sub_seed(example_seed, 0), 0, max_y + 1, tf.int32)
            offset_x = tf.random.stateless_uniform([], augment.sub_seed(example_seed, 1), 0, max_x + 1, tf.int32)
            flip = augment.random_flip(augment.sub_seed(example_seed, 2)) if config.data.flip else tf.constant(False)
            return maker.patches(decoded, offset_y, offset_x, flip)

        dataset = dataset.enumerate().map(crop_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        dataset = dataset.unbatch()
        if config.data.shuffle_buffer > 1:
            dataset = dataset.shuffle(config.data.shuffle_buffer, seed=base_seed + 1)
        dataset = dataset.batch(batch_size, drop_remainder=True)
    else:

        def crops_of_example(serialized: tf.Tensor) -> tf.data.Dataset:
            decoded = decoder.decode(serialized)
            offsets = tf.data.Dataset.from_tensor_slices(eval_crop_offsets(decoded["height"], decoded["width"], layout))
            return offsets.map(lambda offset: maker.patches(decoded, offset[0], offset[1], tf.constant(False)))

        dataset = dataset.flat_map(crops_of_example).unbatch()
        dataset = dataset.batch(batch_size, drop_remainder=repeat)

    def finish(index: tf.Tensor, batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
        batch_seed = tf.stack([tf.constant(base_seed + 2, tf.int64), index])
        return _finish_batch(batch, batch_seed, config, layout, selection, training)

    dataset = dataset.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    if input_context is not None:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def describe_batch(inputs: np.ndarray, labels: np.ndarray) -> str:
    """A one-line summary of a batch's shapes, for status output."""
    return f"inputs {tuple(inputs.shape)} {inputs.dtype}, labels {tuple(labels.shape)} {labels.dtype}"
