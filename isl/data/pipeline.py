"""The tf.data input pipeline: TFRecord shards -> (inputs, labels) batches.

The data flow of `build_dataset`, as Model Garden's input readers:

    shard files -> record indices (this input pipeline's share, interleaved)
      -> crops.index_shard  (each record's metadata and pixel offsets, read once)
      -> RecordSource       (one crop's rows read from the file: never a whole well)
      -> parser.Parser      (crop -> patches: augmentation, labels)
      -> shuffle (training), batch -> Parser.finish_batch -> prefetch

Memory does not grow with image size: an example in flight holds its crop
(`data.crop_size` squared), not its well; the batches are those the
whole-record decoder (`isl.data.decoder`) gives, for the same seeds.

Training (isl_reference.md §3.5, §3.6), per example (one well):

1. draw a uniformly random crop (520 in the paper) of the well zero-padded
   by the network border (mask 0), as the paper's TFRecord path did, when
   `data.pad_border` (otherwise the PNG path: border pixels are never
   trained as centres), from the example's seed and the well's size;
2. read that crop alone (uint16, channels last; `RecordSource`);
3. flip left-right with p = 0.5 (per example);
4. cut 2 x 2 patches of the network input size at stride `patch_stride`
   ({0, 256} in the paper: 4 patches of 250 per 520 crop) and keep the centre
   `output_size` square of the targets;

then patches are shuffled (buffer `data.shuffle_buffer`, 64 in the paper),
batched (global batch 16, or the per-replica share), rotated by one k * 90
degrees per batch (or per patch with `data.rotate_per_example`), mapped from
the source z slices to the network's z values (`isl.data.assemble`),
optionally corrupted, and turned into

* inputs `[batch, P, P, 2 * num_z_values]` float32, z-major value/mask pairs;
* labels `[batch, O, O, num_heads, 2]` float32, value and mask per head in
  `ChannelConfig.head_names` order: the z-mapped (possibly corrupted)
  transmitted light at the centre for the input heads, then the targets in
  `output_target_channels` order (missing ones zero with mask 0, synthetic
  ones computed from their sources).

Steps 2 to the labels are `isl.data.parser`. P and O come from
`isl.model.geometry` (`parser.patch_layout`). Larger outputs (O = 8 + 16k)
grow P; the crop then grows to `patch_stride + P` if needed so each crop
still gives 2 x 2 patches.

Evaluation uses a fixed grid of crops per well (`parser.eval_crop_offsets`),
no augmentation, and a fixed order.
"""

from __future__ import annotations

import glob
import json
import os
import random
import struct

import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.data import parser as parser_lib
from isl.data import schema


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
                    problem = (
                        f"truncated: record {count} at byte {position} needs {16 + length} bytes, "
                        f"{size - position} left"
                    )
            if problem:
                raise errors.InputError(
                    f"{path}: damaged TFRecord shard ({problem}). Run 'isl convert' again to rewrite the dataset."
                )
            position += 16 + length
            count += 1
            handle.seek(position)
    return count


def _check_description(
    description: dict | None,
    data_dir: str,
    split: str,
    config: config_lib.ExperimentConfig,
    layout: parser_lib.PatchLayout,
) -> None:
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


def selection_split(data_dir: str) -> str:
    """The split choices are made on: "val" when `data_dir` has non-empty validation shards, else "eval"."""
    paths = glob.glob(os.path.join(glob.escape(data_dir), schema.shard_pattern("val")))
    return "val" if any(os.path.getsize(path) > 0 for path in paths) else "eval"


def check_dataset(
    data_dir: str, config: config_lib.ExperimentConfig, splits: tuple[str, ...] = ("train", "eval")
) -> None:
    """Checks, without reading any example, that `build_dataset` can serve `splits`.

    Non-empty, structurally whole shards of each split (`check_shard`), a
    readable `dataset.json` and, for training, images large enough for the
    config's crop. Cheap; meant to run before long work (a search) starts.

    Raises:
        InputError: naming the folder or file and what to do.
    """
    layout = parser_lib.patch_layout(config)
    for split in splits:
        list_shards(data_dir, split)
    description = read_description(data_dir)
    if description is None:
        raise errors.InputError(
            f"{data_dir}: no {schema.DATASET_JSON}; the folder must be the output of 'isl convert'."
        )
    for split in splits:
        _check_description(description, data_dir, split, config, layout)


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

    The data flow: shard files -> record indices -> crops read by
    `RecordSource` -> parser patches (`Parser.train_crop` +
    `Parser.window_patches`, or the `eval_crop_offsets` grid) -> shuffle and
    batch -> `Parser.finish_batch` -> prefetch.

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
    layout = parser_lib.patch_layout(config)
    files = list_shards(data_dir, split)
    parser = parser_lib.Parser(config, layout, _max_source_z(data_dir, split, config, layout))
    batch_size = _batch_size(config, input_context, batch_size)
    if seed is None:
        seed = config.train.seed if deterministic else random.SystemRandom().randrange(2**31)
    pipeline_id, num_pipelines = (0, 1) if input_context is None else (
        input_context.input_pipeline_id, input_context.num_input_pipelines
    )
    base_seed = int(seed) * 1009 + pipeline_id

    source = RecordSource(files, parser.layout.crop_size, parser.embedding_size, data_dir)
    records = _records(source.counts, split == "train", repeat, deterministic, base_seed, pipeline_id, num_pipelines)
    if split == "train":
        batches = _train_batches(records, source, parser, batch_size, base_seed, deterministic)
    else:
        batches = _eval_batches(records, source, parser, batch_size, drop_remainder=repeat)
    examples = _finished(batches, parser, split == "train", base_seed + 2, deterministic)
    return _with_options(examples.prefetch(tf.data.AUTOTUNE), deterministic, input_context)


def _max_source_z(
    data_dir: str, split: str, config: config_lib.ExperimentConfig, layout: parser_lib.PatchLayout
) -> int:
    """The dataset's largest z-stack, from its checked `dataset.json`.

    Raises:
        InputError: when `dataset.json` is missing or does not suit the config.
    """
    description = read_description(data_dir)
    _check_description(description, data_dir, split, config, layout)
    if description is None:
        raise errors.InputError(
            f"{data_dir}: no {schema.DATASET_JSON}; the folder must be the output of 'isl convert'."
        )
    return int(description["max_source_z"])


def _batch_size(
    config: config_lib.ExperimentConfig, input_context: tf.distribute.InputContext | None, batch_size: int | None
) -> int:
    """The batch of one input pipeline: `batch_size`, else this replica's share of `train.batch_size`.

    Raises:
        InputError: when it is below 1.
    """
    if batch_size is None:
        batch_size = config.train.batch_size
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
    if batch_size < 1:
        raise errors.InputError(f"batch size must be >= 1. Received: {batch_size}")
    return batch_size


class RecordSource:
    """The records of some shards, indexed (`isl.data.crops`), as lookup tables and a window reader.

    Training and evaluation read only the crops they use, never a whole well,
    so memory per example is a crop's, whatever the image size.

    Args:
        files: the shard files, in order.
        crop_size: the side of the windows `windows` reads.
    """

    def __init__(self, files: list[str], crop_size: int, embedding_size: int = 0, data_dir: str = "") -> None:
        from isl.data import crops

        self.infos: list[crops.RecordInfo] = []
        self.counts: list[int] = []
        for path in files:
            crops.verify_shard(path)
            shard = crops.index_shard(path)
            self.infos.extend(shard)
            self.counts.append(len(shard))
        self.crop_size = crop_size
        self.embedding_size = embedding_size
        wrong = [info for info in self.infos if embedding_size and info.embedding_size != embedding_size]
        if wrong:
            raise errors.InputError(
                f"{data_dir or wrong[0].path}: record {wrong[0].name!r} ({wrong[0].path}) carries "
                f"{wrong[0].embedding_size or 'no'} embedding features, the hybrid (model.hybrid_features) needs "
                f"{embedding_size}; convert the data with isl convert --embed_with=<the frozen model folder>.")
        infos = self.infos
        self._height = tf.constant([info.height for info in infos], tf.int32)
        self._width = tf.constant([info.width for info in infos], tf.int32)
        self._num_z = tf.constant([info.num_source_z for info in infos], tf.int32)
        self._modality = tf.constant([info.modality for info in infos], tf.string)
        self._input_max = tf.constant([float(info.input_max_value) for info in infos], tf.float32)
        self._name = tf.constant([info.name for info in infos], tf.string)
        lengths = [len(info.target_channels) for info in infos]
        self._channels = tf.RaggedTensor.from_row_lengths(
            tf.constant([name for info in infos for name in info.target_channels], tf.string), lengths)
        self._maxima = tf.RaggedTensor.from_row_lengths(
            tf.constant([float(value) for info in infos for value in info.target_max_values], tf.float32), lengths)

    def metadata(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
        """Record `record`'s metadata in `decoder.decode`'s keys (no pixels)."""
        return {
            "height": tf.gather(self._height, record),
            "width": tf.gather(self._width, record),
            "num_source_z": tf.gather(self._num_z, record),
            "modality": tf.gather(self._modality, record),
            "input_max_value": tf.gather(self._input_max, record),
            "target_channels": self._channels[record],
            "target_max_values": self._maxima[record],
            "name": tf.gather(self._name, record),
        }

    def _read(self, record: np.ndarray, top: np.ndarray, left: np.ndarray) -> tuple[np.ndarray, ...]:
        from isl.data import crops

        info = self.infos[int(record)]
        size, top, left = self.crop_size, int(top), int(left)
        inputs = crops.read_window(
            info.path, info.inputs_offset, (info.height, info.width, info.num_source_z), top, left, size)
        targets = crops.read_window(
            info.path, info.targets_offset, (info.height, info.width, len(info.target_channels)), top, left, size)
        if not self.embedding_size:
            return inputs, targets
        embedding = crops.read_window(
            info.path, info.embedding_offset, (info.height, info.width, info.embedding_size), top, left, size)
        return inputs, targets, embedding

    def windows(self, record: tf.Tensor, top: tf.Tensor, left: tf.Tensor) -> tuple[tf.Tensor, ...]:
        """(`[crop, crop, Z]`, `[crop, crop, T]`) uint16 windows at image (top, left), zero outside the image;
        for a hybrid also the `[crop, crop, E]` embedding's float16 bit patterns (uint16)."""
        count = 3 if self.embedding_size else 2
        read = tf.numpy_function(self._read, [record, top, left], [tf.uint16] * count, stateful=False)
        for tensor in read:
            tensor.set_shape([self.crop_size, self.crop_size, None])
        return tuple(read)

    def patches(
        self, parser: parser_lib.Parser, record: tf.Tensor, offset_y: tf.Tensor, offset_x: tf.Tensor, flip: tf.Tensor
    ) -> dict:
        """`Parser.window_patches` of the crop of record `record` at padded (offset_y, offset_x)."""
        metadata = self.metadata(record)
        pad = parser.layout.pad
        inputs, targets, *embedding = self.windows(record, offset_y - pad, offset_x - pad)
        return parser.window_patches(metadata, inputs, targets, offset_y, offset_x, flip,
                                     embedding[0] if embedding else None)


def _records(
    counts: list[int],
    training: bool,
    repeat: bool,
    deterministic: bool,
    base_seed: int,
    pipeline_id: int,
    num_pipelines: int,
) -> tf.data.Dataset:
    """Indices (int64, into `RecordSource.infos`) of this input pipeline's share of the records.

    `counts` is the number of records of each shard file. With several input
    pipelines, each reads every num_pipelines-th file, or every
    num_pipelines-th record when there are fewer files than pipelines.
    Training shuffles the file order (each pass anew). The order is that of
    interleaving the files' records, `cycle_length` min(files, 8).
    """
    starts = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
    sizes = tf.constant(np.asarray(counts, np.int64))
    dataset = tf.data.Dataset.from_tensor_slices(np.arange(len(counts), dtype=np.int64))
    shard_records = num_pipelines > 1 and len(counts) < num_pipelines
    if num_pipelines > 1 and not shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if training:
        dataset = dataset.shuffle(len(counts), seed=base_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def file_records(index: tf.Tensor) -> tf.data.Dataset:
        start = tf.gather(starts, index)
        return tf.data.Dataset.range(start, start + tf.gather(sizes, index))

    dataset = dataset.interleave(
        file_records,
        cycle_length=min(len(counts), 8),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if shard_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    return dataset


def _train_batches(
    records: tf.data.Dataset,
    source: RecordSource,
    parser: parser_lib.Parser,
    batch_size: int,
    base_seed: int,
    deterministic: bool,
) -> tf.data.Dataset:
    """One random crop of each record (its own seed) read and parsed, patches shuffled, full batches."""

    def read_and_parse(index: tf.Tensor, record: tf.Tensor) -> dict:
        example_seed = tf.stack([tf.constant(base_seed, tf.int64), index])
        offset_y, offset_x, flip = parser.train_crop(source.metadata(record), example_seed)
        return source.patches(parser, record, offset_y, offset_x, flip)

    dataset = records.enumerate().map(
        read_and_parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    dataset = dataset.unbatch()
    if parser.config.data.shuffle_buffer > 1:
        dataset = dataset.shuffle(parser.config.data.shuffle_buffer, seed=base_seed + 1)
    return dataset.batch(batch_size, drop_remainder=True)


def _eval_batches(
    records: tf.data.Dataset,
    source: RecordSource,
    parser: parser_lib.Parser,
    batch_size: int,
    drop_remainder: bool,
) -> tf.data.Dataset:
    """Each record's fixed crops (`parser.eval_crop_offsets`), read one at a time, in order; batches."""

    def crops_of(record: tf.Tensor) -> tf.data.Dataset:
        metadata = source.metadata(record)
        grid = parser_lib.eval_crop_offsets(metadata["height"], metadata["width"], parser.layout)
        return tf.data.Dataset.from_tensor_slices(grid).map(
            lambda offset: source.patches(parser, record, offset[0], offset[1], tf.constant(False)))

    dataset = records.flat_map(crops_of).unbatch()
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def _finished(
    batches: tf.data.Dataset, parser: parser_lib.Parser, training: bool, batch_seed: int, deterministic: bool
) -> tf.data.Dataset:
    """(inputs, labels) from each batch of patch dicts (`Parser.finish_batch`), batch i seeded (batch_seed, i)."""

    def finish(index: tf.Tensor, batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
        seed = tf.stack([tf.constant(batch_seed, tf.int64), index])
        return parser.finish_batch(batch, seed, training)

    return batches.enumerate().map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _with_options(
    dataset: tf.data.Dataset, deterministic: bool, input_context: tf.distribute.InputContext | None
) -> tf.data.Dataset:
    """The dataset with its order policy; under a strategy, no auto-sharding (done by `_records`)."""
    options = tf.data.Options()
    options.deterministic = deterministic
    if input_context is not None:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)

def describe_batch(inputs: np.ndarray, labels: np.ndarray) -> str:
    """A one-line summary of a batch's shapes, for status output."""
    return f"inputs {tuple(inputs.shape)} {inputs.dtype}, labels {tuple(labels.shape)} {labels.dtype}"
