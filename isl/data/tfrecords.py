"""Encoding one well as a `tf.train.Example` (the format is in `isl.data.schema`), whole or streamed.

`encode_well` serializes a well held in memory. `RecordFile.write_well` writes
the same record (byte for byte: `encode_well`'s deterministic serialization,
framed as `tf.io.TFRecordWriter` frames it) without ever holding it: the
Example's small fields are serialized by protobuf, its two pixel fields are
written as their wire-format headers followed by the pixels in bands of
rows, and the record's CRC32C is extended as the bands go (`google-crc32c`).
So `isl convert` holds one band of a well, whatever its size.

TFRecord framing: `uint64 length`, `uint32 masked_crc32c(length)`,
`data[length]`, `uint32 masked_crc32c(data)`, little-endian, with
`masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (mod 2^32).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from isl import errors

from isl.data import schema
from isl.data import wells as wells_lib


def _bytes(values: list[bytes]):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values: list[int]):
    import tensorflow as tf

    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def encode_well(raw: wells_lib.RawWell) -> bytes:
    """Serializes a well losslessly.

    Args:
        raw: the well's uint16 pixels, `inputs` `[H, W, Z]`, `targets` `[H, W, T]`.

    Returns:
        The serialized `tf.train.Example`.
    """
    import tensorflow as tf

    # Filled in place, the pixel bytes made one field at a time: building `Feature`s first and handing them to
    # `Features(feature=...)` copied each once more (two whole copies of the well besides the serialized one).
    example = tf.train.Example()
    feature = example.features.feature
    for key, (kind, values) in _fields(raw).items():
        if kind == "int64":
            feature[key].int64_list.value.extend(values)
        else:
            for value in values:
                feature[key].bytes_list.value.append(value() if callable(value) else value)
    # Deterministic: the map's entries sorted by key (protobuf's default order on the wire changes from process to
    # process), so a well's record is the same bytes every time, and equal to `RecordFile.write_well`'s.
    return example.SerializeToString(deterministic=True)


def _fields(raw: wells_lib.RawWell, shape: tuple[int, int, int] | None = None) -> dict[str, tuple[str, list]]:
    """The Example's fields in order: key -> ("bytes" or "int64", values); pixel bytes as callables (made late).

    `shape`: (height, width, num_z) when `raw`'s arrays are not `[H, W, Z]` (a `SpilledRawWell`).
    """
    source = raw.source
    height, width, num_z = shape or raw.inputs.shape
    metadata = source.metadata
    return {
        schema.WELL_NAME: ("bytes", [source.name.encode()]),
        schema.WELL_LAB: ("bytes", [metadata.get("lab", "").encode()]),
        schema.WELL_CONDITION: ("bytes", [metadata.get("condition", "").encode()]),
        schema.WELL_WELL: ("bytes", [metadata.get("well", "").encode()]),
        schema.WELL_DATE: ("bytes", [metadata.get("date", "").encode()]),
        schema.WELL_SOURCE_FILES: ("bytes", [path.encode() for path in source.source_files]),
        schema.IMAGE_HEIGHT: ("int64", [height]),
        schema.IMAGE_WIDTH: ("int64", [width]),
        schema.INPUTS_MODALITY: ("bytes", [source.modality.encode()]),
        schema.INPUTS_NUM_Z: ("int64", [num_z]),
        schema.INPUTS_MAX_VALUE: ("int64", [raw.input_max_value]),
        schema.INPUTS_DATA: ("bytes", [lambda: np.ascontiguousarray(raw.inputs, dtype="<u2").tobytes()]),
        schema.TARGETS_CHANNELS: ("bytes", [channel.encode() for channel in source.target_channels]),
        schema.TARGETS_MAX_VALUES: ("int64", list(raw.target_max_values)),
        schema.TARGETS_DATA: ("bytes", [lambda: np.ascontiguousarray(raw.targets, dtype="<u2").tobytes()]),
        **({} if raw.embedding is None else {
            schema.EMBEDDING_SIZE: ("int64", [raw.embedding.shape[-1]]),
            schema.EMBEDDING_DATA: ("bytes", [lambda: np.ascontiguousarray(raw.embedding, dtype="<f2").tobytes()]),
        }),
    }



BAND_BYTES = 32 << 20  # The pixel bytes `RecordFile.write_well` makes at a time (rows of all planes).
_MASK_DELTA = 0xA282EAD8


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`."""
    import google_crc32c

    return _mask(google_crc32c.value(data))


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _small_entry(key: str, kind: str, values: list) -> bytes:
    """One `Features` map entry on the wire (`0x0a`, length, key and Feature), serialized by protobuf."""
    import tensorflow as tf

    features = tf.train.Features()
    feature = features.feature[key]
    if kind == "int64":
        feature.int64_list.value.extend(values)
    else:
        feature.bytes_list.value.extend(values)
    return features.SerializeToString(deterministic=True)


def _pixels_entry_header(key: str, size: int) -> bytes:
    """A `Features` map entry holding one bytes value of `size` bytes, up to where those bytes start."""
    encoded = key.encode()
    value = b"\x0a" + _varint(size)  # BytesList.value (field 1), then `size` bytes.
    bytes_list = b"\x0a" + _varint(len(value) + size)  # Feature.bytes_list (field 1).
    feature = b"\x12" + _varint(len(bytes_list) + len(value) + size)  # The entry's value (field 2).
    entry = b"\x0a" + _varint(len(encoded)) + encoded + feature + bytes_list + value  # Key (field 1) first.
    return b"\x0a" + _varint(len(entry) + size) + entry


def _window_rows(pixels: Any, row0: int, row1: int, column0: int, column1: int) -> np.ndarray:
    """Rows `[row0, row1)` and columns `[column0, column1)` of an `[H, W, C]` array or a spilled `[C, H, W]`
    stack, as `[rows, columns, C]` little-endian uint16 (the record's pixel order)."""
    if isinstance(pixels, wells_lib.SpilledStack):
        band = np.moveaxis(pixels[:, row0:row1, column0:column1], 0, -1)
    else:
        band = pixels[row0:row1, column0:column1]
    return np.ascontiguousarray(band, dtype="<u2")


class RecordFile:
    """A TFRecord file written record by record, a record in pieces with its CRC32C extended as they go.

    Usage: `with RecordFile(path) as records: records.write_well(...)`. An
    OSError while writing (a full disk) is an InputError naming the file;
    the caller removes what was written (`isl convert` writes into a
    temporary folder that is removed on any error).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._stream = open(path, "wb")  # noqa: SIM115 (closed by close / __exit__)
        except OSError as error:
            raise self._error(error) from None

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        if not self._stream.closed:
            try:
                self._stream.close()
            except OSError as error:
                raise self._error(error) from None

    def _error(self, error: OSError) -> errors.InputError:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        return errors.InputError(f"{self.path}: cannot write the record ({reason}); nothing was kept. Free space "
                                 "or choose another --output_dir.")

    def write_record(self, length: int, pieces: Iterator[bytes]) -> None:
        """Writes one record of `length` bytes given as consecutive pieces."""
        import google_crc32c

        header = struct.pack("<Q", length)
        crc, written = 0, 0
        try:
            self._stream.write(header + struct.pack("<I", masked_crc32c(header)))
            for piece in pieces:
                crc = google_crc32c.extend(crc, piece)
                self._stream.write(piece)
                written += len(piece)
            if written != length:
                raise ValueError(f"{self.path}: a record of {length} bytes got {written}.")
            self._stream.write(struct.pack("<I", _mask(crc)))
        except OSError as error:
            raise self._error(error) from None

    def write_well(self, raw: Any, region: tuple[tuple[int, int], tuple[int, int]] | None = None,
                   band_bytes: int = BAND_BYTES) -> None:
        """Writes `encode_well` of a well cropped to `region`, streamed in bands of rows.

        Args:
            raw: a `wells.RawWell` (`[H, W, C]` arrays) or a `wells.SpilledRawWell` (spilled `[C, H, W]`).
            region: ((row0, row1), (column0, column1)) inside the image, or None for all of it.
            band_bytes: about how many pixel bytes to make at a time.
        """
        spilled = isinstance(raw.inputs, wells_lib.SpilledStack)
        if spilled:
            num_z, full_height, full_width = raw.inputs.shape
            num_targets = raw.targets.shape[0]
        else:
            full_height, full_width, num_z = raw.inputs.shape
            num_targets = raw.targets.shape[2]
        (row0, row1), (column0, column1) = region or ((0, full_height), (0, full_width))
        height, width = row1 - row0, column1 - column0
        pixels = {schema.INPUTS_DATA: (raw.inputs, num_z), schema.TARGETS_DATA: (raw.targets, num_targets)}
        entries: list[tuple[str, bytes, int, Callable[[], Iterator[bytes]] | None]] = []
        for key, (kind, values) in _fields(raw, (height, width, num_z)).items():
            if key in pixels:
                array, channels = pixels[key]
                size = height * width * channels * 2

                def bands(array: Any = array, channels: int = channels) -> Iterator[bytes]:
                    step = max(1, band_bytes // max(1, width * channels * 2))
                    for first in range(row0, row1, step):
                        yield _window_rows(array, first, min(row1, first + step), column0, column1).tobytes()

                entries.append((key, _pixels_entry_header(key, size), size, bands))
            else:
                # The hybrid's embedding (`[h, w, E]` float16 of the region, made whole by `isl convert`) is small.
                values = [value() if callable(value) else value for value in values]
                entries.append((key, _small_entry(key, kind, values), 0, None))
        entries.sort(key=lambda entry: entry[0].encode())  # The deterministic order: by key.
        features_length = sum(len(header) + size for _, header, size, _ in entries)
        prefix = b"\x0a" + _varint(features_length)  # Example.features (field 1).

        def pieces() -> Iterator[bytes]:
            yield prefix
            for _, header, _, bands in entries:
                yield header
                if bands is not None:
                    yield from bands()

        self.write_record(len(prefix) + features_length, pieces())
