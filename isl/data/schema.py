"""The TFRecord format: `tf.train.Example` feature keys, layouts and shard names.

One Example holds one well (one field of view), losslessly:

| key | type | content |
|---|---|---|
| `well/name`, `well/lab`, `well/condition`, `well/well`, `well/date` | bytes | metadata |
| `well/source_files` | bytes list | the image files read |
| `image/height`, `image/width` | int64 | H, W |
| `inputs/modality` | bytes | transmitted-light modality, e.g. PHASE_CONTRAST |
| `inputs/num_z` | int64 | Z, the number of *source* z slices (13, 26, ...) |
| `inputs/max_value` | int64 | 255 or 65535: value / max_value is in [0, 1] |
| `inputs/data` | bytes | uint16 little-endian, `[H, W, Z]` (channels last) |
| `targets/channels` | bytes list | the T real fluorescence channels present |
| `targets/max_values` | int64 list | per target: 255 or 65535 |
| `targets/data` | bytes | uint16 little-endian, `[H, W, T]` |
| `embedding/size` | int64 | E: 0, or the hybrid's frozen-core features (`isl convert --embed_with`) |
| `embedding/data` | bytes | float16 little-endian, `[H, W, E]` (absent when E = 0) |

8-bit images are stored as their uint16 values (not rescaled) with
max_value 255, so value / max_value equals the released reader's value.
The z mapping to the network's z values, the missing-label zeros and the
synthetic channels (NEURITE) are made in the pipeline from the
`ChannelConfig`, so a vocabulary change needs no reconversion.
"""

from __future__ import annotations

FORMAT_VERSION = 1
DATASET_JSON = "dataset.json"
SPLITS = ("train", "eval", "val")  # "val": the optional validation split (keep_best selects on it).

WELL_NAME = "well/name"
WELL_LAB = "well/lab"
WELL_CONDITION = "well/condition"
WELL_WELL = "well/well"
WELL_DATE = "well/date"
WELL_SOURCE_FILES = "well/source_files"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
INPUTS_MODALITY = "inputs/modality"
INPUTS_NUM_Z = "inputs/num_z"
INPUTS_MAX_VALUE = "inputs/max_value"
INPUTS_DATA = "inputs/data"
TARGETS_CHANNELS = "targets/channels"
TARGETS_MAX_VALUES = "targets/max_values"
TARGETS_DATA = "targets/data"
EMBEDDING_SIZE = "embedding/size"
EMBEDDING_DATA = "embedding/data"

PIXEL_ENCODING = "raw uint16 little-endian, [height, width, planes] (channels last)"


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00004.tfrecord`."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def shard_pattern(split: str) -> str:
    """Glob pattern of a split's shards."""
    return f"{split}-?????-of-?????.tfrecord"


def feature_spec() -> dict:
    """The parsing spec for `tf.io.parse_single_example`."""
    import tensorflow as tf

    return {
        WELL_NAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
        WELL_LAB: tf.io.FixedLenFeature([], tf.string, default_value=""),
        WELL_CONDITION: tf.io.FixedLenFeature([], tf.string, default_value=""),
        WELL_WELL: tf.io.FixedLenFeature([], tf.string, default_value=""),
        WELL_DATE: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        INPUTS_MODALITY: tf.io.FixedLenFeature([], tf.string),
        INPUTS_NUM_Z: tf.io.FixedLenFeature([], tf.int64),
        INPUTS_MAX_VALUE: tf.io.FixedLenFeature([], tf.int64),
        INPUTS_DATA: tf.io.FixedLenFeature([], tf.string),
        TARGETS_CHANNELS: tf.io.VarLenFeature(tf.string),
        TARGETS_MAX_VALUES: tf.io.VarLenFeature(tf.int64),
        TARGETS_DATA: tf.io.FixedLenFeature([], tf.string, default_value=""),
        EMBEDDING_SIZE: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        EMBEDDING_DATA: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
