"""Reading windows of converted wells without decoding whole wells (bounded memory).

A record of `isl convert` holds one well as one `tf.train.Example` whose
pixels are two raw uint16 byte fields, `[H, W, Z]` and `[H, W, T]`, row-major
(`isl.data.schema`). Decoding the record (`isl.data.decoder`) reads and copies
the whole well, so training on a 2304² or 10,000² well would hold several
copies of it per example in flight. Here each record is indexed once: its
protobuf wire format is walked with small reads (tags and lengths only), the
metadata fields are parsed, and the file offsets of the two pixel fields are
kept. A window `[y0:y1, x0:x1]` is then read with one `pread` per row, so
memory per example is the window, whatever the image size; the record format
is unchanged and every record `isl convert` ever wrote is read.

The CRCs are checked once per shard when the pipeline is built
(`verify_shard`: TensorFlow's reader, one record in memory at a time), so a
damaged record is named before training starts rather than read silently.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np

from isl import errors
from isl.data import schema

# Metadata fields read in full while indexing (the pixel fields are located, not read).
_PIXEL_FIELDS = (schema.INPUTS_DATA, schema.TARGETS_DATA, schema.EMBEDDING_DATA)


@dataclasses.dataclass(frozen=True)
class RecordInfo:
    """One indexed record: its well's metadata and where its pixels are.

    Attributes:
        path: the shard file.
        name: the well name.
        height, width: the image size.
        num_source_z: Z, the source z slices.
        modality: the transmitted-light modality.
        input_max_value: 255 or 65535.
        target_channels: the T real target channels present, in record order.
        target_max_values: per target, 255 or 65535.
        inputs_offset: file offset of the `[H, W, Z]` uint16 little-endian pixels.
        targets_offset: file offset of the `[H, W, T]` pixels (-1 when T = 0).
        embedding_size: E, the hybrid's embedding features (0: none).
        embedding_offset: file offset of the `[H, W, E]` float16 embedding (-1 when E = 0).
    """

    path: str
    name: str
    height: int
    width: int
    num_source_z: int
    modality: str
    input_max_value: int
    target_channels: tuple[str, ...]
    target_max_values: tuple[int, ...]
    inputs_offset: int
    targets_offset: int
    embedding_size: int = 0
    embedding_offset: int = -1


class _Reader:
    """Small positioned reads of one file."""

    def __init__(self, handle, path: str) -> None:
        self.handle = handle
        self.path = path

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self.handle.fileno(), size, offset)
        if len(data) != size:
            raise errors.InputError(f"{self.path}: truncated record at byte {offset}. Run 'isl convert' again.")
        return data

    def varint(self, offset: int) -> tuple[int, int]:
        """(value, offset after it)."""
        value = shift = 0
        for _ in range(10):
            (byte,) = self.read(offset, 1)
            offset += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, offset
            shift += 7
        raise errors.InputError(f"{self.path}: damaged record (bad varint at byte {offset}). Run 'isl convert' again.")

    def field(self, offset: int) -> tuple[int, int, int, int]:
        """One length-delimited field at `offset`: (field number, payload offset, payload length, end)."""
        tag, offset = self.varint(offset)
        if tag & 7 != 2:
            raise errors.InputError(f"{self.path}: not an isl record (unexpected wire type at byte {offset}).")
        length, offset = self.varint(offset)
        return tag >> 3, offset, length, offset + length


def _pixel_offset(reader: _Reader, feature_start: int, feature_end: int) -> int:
    """The offset of the first bytes value of a `Feature` holding a `BytesList` (-1 when empty)."""
    if feature_start == feature_end:
        return -1
    number, start, length, _ = reader.field(feature_start)
    if number != 1 or length == 0:  # bytes_list; an empty one: no value
        return -1
    _, value_start, _, _ = reader.field(start)
    return value_start


def _index_record(reader: _Reader, start: int, end: int) -> RecordInfo:
    """Walks one serialized Example between `start` and `end` (file offsets)."""
    from tensorflow.core.example import feature_pb2

    number, position, _, example_end = reader.field(start)
    if number != 1 or example_end > end:
        raise errors.InputError(f"{reader.path}: not an isl record at byte {start}. Run 'isl convert' again.")
    features: dict = {}
    offsets: dict[str, int] = {}
    while position < example_end:
        _, entry_start, _, entry_end = reader.field(position)
        _, key_start, key_length, key_end = reader.field(entry_start)
        key = reader.read(key_start, key_length).decode()
        if key_end < entry_end:
            _, value_start, value_length, _ = reader.field(key_end)
            if key in _PIXEL_FIELDS:
                offsets[key] = _pixel_offset(reader, value_start, value_start + value_length)
            else:
                try:
                    features[key] = feature_pb2.Feature.FromString(reader.read(value_start, value_length))
                except Exception:  # noqa: BLE001 - protobuf's DecodeError: a damaged record
                    raise errors.InputError(f"{reader.path}: damaged TFRecord shard (feature {key!r} of the record "
                                            f"at byte {start} does not parse). Run 'isl convert' again.") from None
        position = entry_end

    def ints(key: str) -> list[int]:
        return list(features[key].int64_list.value) if key in features else []

    def strings(key: str) -> list[str]:
        return [value.decode() for value in features[key].bytes_list.value] if key in features else []

    required = (schema.IMAGE_HEIGHT, schema.IMAGE_WIDTH, schema.INPUTS_NUM_Z, schema.INPUTS_MAX_VALUE)
    missing = [key for key in required if not ints(key)] + [key for key in (schema.INPUTS_DATA,) if key not in offsets]
    if missing:
        raise errors.InputError(f"{reader.path}: record at byte {start} lacks {', '.join(missing)}; "
                                "run 'isl convert' again.")
    channels = tuple(strings(schema.TARGETS_CHANNELS))
    return RecordInfo(
        path=reader.path,
        name=(strings(schema.WELL_NAME) or [""])[0],
        height=ints(schema.IMAGE_HEIGHT)[0],
        width=ints(schema.IMAGE_WIDTH)[0],
        num_source_z=ints(schema.INPUTS_NUM_Z)[0],
        modality=(strings(schema.INPUTS_MODALITY) or [""])[0],
        input_max_value=ints(schema.INPUTS_MAX_VALUE)[0],
        target_channels=channels,
        target_max_values=tuple(ints(schema.TARGETS_MAX_VALUES)),
        inputs_offset=offsets[schema.INPUTS_DATA],
        targets_offset=offsets.get(schema.TARGETS_DATA, -1) if channels else -1,
        embedding_size=(ints(schema.EMBEDDING_SIZE) or [0])[0] if schema.EMBEDDING_DATA in offsets else 0,
        embedding_offset=offsets.get(schema.EMBEDDING_DATA, -1) if ints(schema.EMBEDDING_SIZE) else -1,
    )


def index_shard(path: str) -> list[RecordInfo]:
    """Every record of one TFRecord shard, indexed without reading its pixels.

    Raises:
        InputError: naming the file, for a truncated or foreign record.
    """
    size = os.path.getsize(path)
    records = []
    with open(path, "rb") as handle:
        reader = _Reader(handle, path)
        position = 0
        while position < size:
            (length,) = struct.unpack("<Q", reader.read(position, 8))
            data_start = position + 12
            if data_start + length + 4 > size:
                raise errors.InputError(f"{path}: truncated record at byte {position}. Run 'isl convert' again.")
            records.append(_index_record(reader, data_start, data_start + length))
            position = data_start + length + 4
    return records


def verify_shard(path: str) -> None:
    """Reads every record of a shard once, checking its CRCs (one record in memory at a time).

    Raises:
        InputError: naming the file and the damage, for a corrupted or truncated record.
    """
    import tensorflow as tf

    try:
        for _ in tf.data.TFRecordDataset(path):
            pass
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as error:
        text = (getattr(error, "message", None) or str(error)).strip().splitlines()[0][:200]
        raise errors.InputError(
            f"{path}: damaged TFRecord shard ({text}). Run 'isl convert' again to rewrite the dataset.") from None


def read_window(
    path: str, offset: int, shape: tuple[int, int, int], top: int, left: int, size: int
) -> np.ndarray:
    """`[size, size, C]` uint16: the window at (top, left) of an `[H, W, C]` record field, zero outside the image.

    A float16 field (the embedding) is read the same way: its bit patterns, for `.view(np.float16)`.

    Args:
        path: the shard file.
        offset: the field's file offset (`RecordInfo.inputs_offset` / `targets_offset`).
        shape: (H, W, C) of the field.
        top, left: the window's first row and column in image coordinates (may be negative).
        size: the window side.
    """
    height, width, channels = shape
    window = np.zeros((size, size, channels), np.uint16)
    y0, y1 = max(top, 0), min(top + size, height)
    x0, x1 = max(left, 0), min(left + size, width)
    if y1 <= y0 or x1 <= x0 or channels == 0 or offset < 0:
        return window
    row_bytes = (x1 - x0) * channels * 2
    with open(path, "rb") as handle:
        descriptor = handle.fileno()
        for row in range(y0, y1):
            data = os.pread(descriptor, row_bytes, offset + 2 * channels * (row * width + x0))
            if len(data) != row_bytes:
                raise errors.InputError(f"{path}: truncated record pixels. Run 'isl convert' again.")
            window[row - top, x0 - left : x1 - left] = np.frombuffer(data, "<u2").reshape(x1 - x0, channels)
    return window


def read_rows(info: RecordInfo, field: str, row0: int, row1: int) -> np.ndarray:
    """`[row1 - row0, W, C]` uint16 rows of a record's inputs (`field` "inputs") or targets ("targets")."""
    channels = info.num_source_z if field == "inputs" else len(info.target_channels)
    offset = info.inputs_offset if field == "inputs" else info.targets_offset
    rows = np.zeros((row1 - row0, info.width, channels), np.uint16)
    if channels == 0 or offset < 0 or row1 <= row0:
        return rows
    size = (row1 - row0) * info.width * channels * 2
    with open(info.path, "rb") as handle:
        data = os.pread(handle.fileno(), size, offset + 2 * channels * row0 * info.width)
    if len(data) != size:
        raise errors.InputError(f"{info.path}: truncated record pixels. Run 'isl convert' again.")
    return np.frombuffer(data, "<u2").reshape(rows.shape).copy()
