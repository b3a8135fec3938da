"""Reading and writing grayscale microscope images (no TensorFlow).

Read: 8- and 16-bit PNG (grey, or a palette whose colours are all grey);
TIFF through tifffile: single- and multi-page, OME-TIFF, ImageJ hyperstacks,
with the z (`Z`, or plain pages) and channel (`C`) axes from the file's own
metadata; and, with the optional extra `pip install -e '.[formats]'`, the
formats of bioio and its plugins: OME-Zarr, CZI, LIF, ND2 (`BIOIO_EXTENSIONS`).
A plane is addressed by (page = z index, channel index).

Pixel values are kept in their integer type here; `to_float` divides by the
type's maximum (255 or 65535), as the released code's reader did (§3.4).
12- or 14-bit data stored in 16 bits keep their values; `ImageInfo.significant_bits`
reports the depth a file declares (OME `SignificantBits`), and callers divide
by `2**bits - 1` instead. Every problem with a file (missing, not an image,
truncated, colour, an unsupported pixel type, pages of different sizes, a
vendor format without its reader) raises `InputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np

from isl import errors
from isl.io import atomic

PNG_EXTENSIONS = (".png",)
TIFF_EXTENSIONS = (".tif", ".tiff")
# Read through bioio (optional extra `formats`): extension -> plugin package.
BIOIO_PLUGINS = {".zarr": "bioio-ome-zarr", ".czi": "bioio-czi", ".lif": "bioio-lif", ".nd2": "bioio-nd2"}
BIOIO_EXTENSIONS = tuple(BIOIO_PLUGINS)
IMAGE_EXTENSIONS = PNG_EXTENSIONS + TIFF_EXTENSIONS + BIOIO_EXTENSIONS
# Extensions that are images we do not read: named in an error, never skipped silently.
UNSUPPORTED_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".bmp", ".gif", ".webp")
FORMATS_INSTALL = "pip install -e '.[formats]'"

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image file, read without decoding the pixels.

    Attributes:
        height: rows.
        width: columns.
        dtype: numpy dtype of the pixels (uint8 or uint16).
        num_pages: z planes (TIFF pages or the file's Z axis); 1 for PNG.
        num_channels: channels (the file's C axis); 1 for PNG.
        channel_names: the channel names the file's metadata gives, if any.
        significant_bits: the bit depth the file declares (e.g. 12 or 14
            in a 16-bit container), or None.
    """

    height: int
    width: int
    dtype: np.dtype
    num_pages: int = 1
    num_channels: int = 1
    channel_names: tuple[str, ...] = ()
    significant_bits: int | None = None

    @property
    def bit_depth(self) -> int:
        return 8 * self.dtype.itemsize


def _extension(path: str) -> str:
    return os.path.splitext(os.fspath(path).rstrip("/" + os.sep))[1].lower()


def is_image_path(path: str) -> bool:
    """True when the extension is one we read (PNG, TIFF, and the bioio formats)."""
    return _extension(path) in IMAGE_EXTENSIONS


def is_bioio_path(path: str) -> bool:
    """True for the formats read through the optional bioio extra."""
    return _extension(path) in BIOIO_EXTENSIONS


def is_unsupported_image_path(path: str) -> bool:
    """True for image formats we refuse (lossy or proprietary)."""
    return os.path.splitext(path)[1].lower() in UNSUPPORTED_IMAGE_EXTENSIONS


def max_value(dtype: np.dtype | type) -> int:
    """The value that maps to 1.0: 255 for uint8, 65535 for uint16."""
    return int(np.iinfo(np.dtype(dtype)).max)


def to_float(array: np.ndarray) -> np.ndarray:
    """Integer pixels -> float32 in [0, 1], divided by the type's maximum."""
    return array.astype(np.float32) / np.float32(max_value(array.dtype))


def _is_tiff(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in TIFF_EXTENSIONS


def _pil_dtype(path: str, mode: str) -> np.dtype:
    if mode == "L":
        return np.dtype(np.uint8)
    if mode.startswith("I;16"):
        return np.dtype(np.uint16)
    if mode == "I":
        # Some Pillow versions decode 16-bit grayscale PNG as 32-bit "I".
        return np.dtype(np.uint16)
    if mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr"):
        raise errors.InputError(
            f"{path}: a colour image (mode {mode}); expected single-channel 8- or 16-bit grayscale."
        )
    raise errors.InputError(f"{path}: unsupported pixel mode {mode!r}; expected 8- or 16-bit grayscale.")


def _check_exists(path: str) -> None:
    if is_bioio_path(path) and os.path.isdir(path):
        return  # OME-Zarr is a folder.
    if not os.path.isfile(path):
        raise errors.InputError(f"{path}: file not found.")


def _grey_palette(image: Any) -> np.ndarray | None:
    """The 256-entry lookup table of a palette image whose colours are all grey, else None."""
    palette = image.getpalette()
    if not palette:
        return None
    rgb = np.asarray(palette, np.int32).reshape(-1, 3)
    if not np.array_equal(rgb[:, 0], rgb[:, 1]) or not np.array_equal(rgb[:, 0], rgb[:, 2]):
        return None
    table = np.zeros(256, np.uint8)
    table[: len(rgb)] = rgb[:256, 0]
    return table


_OME_BITS = re.compile(r'SignificantBits="(\d+)"')
_OME_CHANNEL = re.compile(r"<(?:\w+:)?Channel\b([^>]*)>")
_OME_NAME = re.compile(r'\bName="([^"]*)"')
# Axes of a tifffile series that may only have size 1 (time, position, ...).
_Z_AXES = ("Z", "I", "Q")


def _ome_facts(xml: str | None) -> tuple[int | None, tuple[str, ...]]:
    """(SignificantBits, channel names) of the first image in OME-XML."""
    if not xml:
        return None, ()
    bits = _OME_BITS.search(xml)
    names = tuple(
        (found.group(1) if found else "")
        for found in (_OME_NAME.search(attributes) for attributes in _OME_CHANNEL.findall(xml.split("</Image>")[0]))
    )
    return (int(bits.group(1)) if bits else None), names


def _tiff_layout(path: str, shape: tuple[int, ...], axes: str) -> tuple[int, int, int, int, str, str]:
    """(height, width, num_z, num_channels, z axis, c axis) of a tifffile series."""
    if "S" in axes and shape[axes.index("S")] > 1:
        raise errors.InputError(f"{path}: a colour/multi-sample TIFF (axes {axes}); expected grayscale planes.")
    if len(shape) < 2 or axes[-2:] != "YX":
        raise errors.InputError(f"{path}: TIFF of shape {shape} (axes {axes}); expected planes of Y x X pixels.")
    z_axis = next((axis for axis in _Z_AXES if axis in axes[:-2]), "")
    c_axis = "C" if "C" in axes[:-2] else ""
    for axis, size in zip(axes[:-2], shape[:-2]):
        if axis not in (z_axis, c_axis, "S") and size != 1:
            what = "time points" if axis == "T" else f"entries along axis {axis}"
            raise errors.InputError(
                f"{path}: TIFF of shape {shape} (axes {axes}) has {size} {what}; expected one field of view "
                "with z and channel axes only (save one time point / position per file)."
            )
    num_z = shape[axes.index(z_axis)] if z_axis else 1
    num_c = shape[axes.index(c_axis)] if c_axis else 1
    return shape[-2], shape[-1], num_z, num_c, z_axis, c_axis


def _pages_as_planes(tiff: Any) -> bool:
    """True for a TIFF whose pages were written one by one (several 2-D series).

    Those pages are its z planes when they all have one size; pages of
    different sizes are an error naming the sizes.
    """
    if len(tiff.series) < 2 or tiff.is_ome:
        return False
    shapes = [tuple(page.shape) for page in tiff.pages]
    if len(set(shapes)) > 1:
        listed = ", ".join(f"page {index}: {'x'.join(map(str, shape))}" for index, shape in enumerate(shapes[:8]))
        raise errors.InputError(
            f"{tiff.filehandle.path}: the pages (z slices) differ in size ({listed}); every plane of a stack must "
            "have the same height and width."
        )
    if len(shapes[0]) != 2:
        raise errors.InputError(f"{tiff.filehandle.path}: holds several images of shape {shapes[0]}; expected planes.")
    return True


def _tiff_info(path: str) -> ImageInfo:
    """Size, type, z planes and channels of a TIFF's (only) series.

    A z-stack may be stored as one page per plane or as one 3-D page; both
    give `num_pages` = number of planes. OME-TIFF and ImageJ hyperstacks give
    their Z and C axes; pages of different sizes are refused.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            if not len(tiff.pages) or not tiff.series:
                raise errors.InputError(f"{path}: the TIFF has no images.")
            series = tiff.series[0]
            shape = tuple(int(size) for size in series.shape)
            axes = series.axes
            if _pages_as_planes(tiff):
                shape, axes = (len(tiff.pages), *shape[-2:]), "I" + axes[-2:]
            dtype = np.dtype(series.dtype)
            bits, names = _ome_facts(tiff.ome_metadata if tiff.is_ome else None)
            if bits is None and series.pages and getattr(series.pages[0], "bitspersample", 0) in (10, 12, 14):
                bits = int(series.pages[0].bitspersample)
    except errors.InputError:
        raise
    except Exception as error:  # tifffile raises many types for bad files.
        raise errors.InputError(f"{path}: not a readable TIFF image ({error}).") from None
    height, width, num_z, num_c, _, _ = _tiff_layout(path, shape, axes)
    _check_dtype(path, dtype)
    return ImageInfo(
        height=height, width=width, dtype=dtype, num_pages=num_z, num_channels=num_c,
        channel_names=names if len(names) == num_c else (), significant_bits=bits,
    )


def _check_dtype(path: str, dtype: np.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise errors.InputError(
            f"{path}: pixel type {dtype}; only 8- and 16-bit unsigned images are read "
            "(10-, 12- and 14-bit data in 16-bit files are fine)."
        )


def _bioio_image(path: str) -> Any:
    """Opens a file with bioio (first scene); InputError naming the package when absent."""
    plugin = BIOIO_PLUGINS[_extension(path)]
    try:
        import bioio
    except ImportError:
        raise errors.InputError(
            f"{path}: reading {_extension(path)} files needs the optional bioio readers: "
            f"{FORMATS_INSTALL} (installs bioio and {plugin}), or save the planes as TIFF."
        ) from None
    try:
        return bioio.BioImage(path)
    except Exception as error:  # bioio raises its own types, plus the plugin's.
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "Unsupported" in type(error).__name__ or "plugin" in text.lower():
            raise errors.InputError(
                f"{path}: bioio found no reader for it; install {plugin} ({FORMATS_INSTALL}). ({text})"
            ) from None
        raise errors.InputError(f"{path}: not readable by bioio with {plugin} ({text}).") from None


def _bioio_info(path: str) -> ImageInfo:
    image = _bioio_image(path)
    try:
        dims = image.dims
        dtype = np.dtype(image.dtype)
        names = tuple(str(name) for name in (image.channel_names or ()))
        time_points = int(dims.T)
        num_z, num_c, height, width = int(dims.Z), int(dims.C), int(dims.Y), int(dims.X)
        samples = int(getattr(dims, "S", 1)) if "S" in dims.order else 1
    except Exception as error:
        raise errors.InputError(f"{path}: bioio could not read its dimensions ({error}).") from None
    if samples > 1:
        raise errors.InputError(f"{path}: a colour (RGB) image; expected grayscale planes.")
    if time_points > 1:
        raise errors.InputError(
            f"{path}: has {time_points} time points; expected one field of view (export one time point)."
        )
    _check_dtype(path, dtype)
    return ImageInfo(height=height, width=width, dtype=dtype, num_pages=num_z, num_channels=num_c,
                     channel_names=names if len(names) == num_c else ())


def read_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Reads an image's size, type, z planes and channels from its header.

    Raises:
        InputError: naming the file when it is missing, not a readable image,
            or a vendor format without the optional bioio readers.
    """
    path = os.fspath(path)
    _check_exists(path)
    if _is_tiff(path):
        return _tiff_info(path)
    if is_bioio_path(path):
        return _bioio_info(path)
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise errors.InputError(f"{path}: not a PNG image (found {image.format}).")
            width, height = image.size
            mode = image.mode
            if mode == "P" and _used_grey_palette(image) is not None:
                mode = "L"
    except errors.InputError:
        raise
    except Exception as error:
        raise errors.InputError(f"{path}: not a readable PNG image ({error}).") from None
    return ImageInfo(height=int(height), width=int(width), dtype=_pil_dtype(path, mode))


def _used_grey_palette(image: Any) -> np.ndarray | None:
    """The lookup table of a palette PNG when every colour its pixels use is grey."""
    table = _grey_palette(image)
    if table is not None:
        return table
    palette = image.getpalette()
    if not palette:
        return None
    rgb = np.zeros((256, 3), np.int32)
    entries = np.asarray(palette, np.int32).reshape(-1, 3)[:256]
    rgb[: len(entries)] = entries
    used = np.unique(np.asarray(image))
    if np.array_equal(rgb[used, 0], rgb[used, 1]) and np.array_equal(rgb[used, 0], rgb[used, 2]):
        return rgb[:, 0].astype(np.uint8)
    return None


def read_image(path: str | os.PathLike[str], page: int = 0, channel: int = 0) -> np.ndarray:
    """Reads one plane as a 2-D uint8 or uint16 array, `[height, width]`.

    Args:
        path: a PNG, TIFF or (with the formats extra) bioio file.
        page: the z plane; PNG files have only page 0.
        channel: the channel index (the file's C axis); 0 for single-channel files.

    Raises:
        InputError: naming the file when it is missing, truncated, corrupt,
            colour, or not 8/16-bit.
    """
    path = os.fspath(path)
    _check_exists(path)
    if _is_tiff(path) or is_bioio_path(path):
        return _read_plane(path, page, channel)
    if page != 0 or channel != 0:
        raise errors.InputError(f"{path}: a PNG has one plane; plane {page}, channel {channel} requested.")
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise errors.InputError(f"{path}: not a PNG image (found {image.format}).")
            image.load()
            table = _used_grey_palette(image) if image.mode == "P" else None
            dtype = _pil_dtype(path, "L" if table is not None else image.mode)
            array = np.asarray(image)
            if table is not None:
                array = table[array]
    except errors.InputError:
        raise
    except Exception as error:
        raise errors.InputError(f"{path}: truncated or corrupt image ({error}).") from None
    if array.ndim != 2:
        raise errors.InputError(f"{path}: expected a 2-D grayscale image, got shape {array.shape}.")
    if array.dtype != dtype:
        if array.min(initial=0) < 0 or array.max(initial=0) > max_value(dtype):
            raise errors.InputError(f"{path}: pixel values outside the {dtype} range.")
        array = array.astype(dtype)
    return np.ascontiguousarray(array)


# The last multi-plane file read, as `[channels, z, height, width]`: a z-stack
# is read plane by plane, and decoding it once per plane would cost n^2.
_CACHE: dict[str, Any] = {"key": None, "array": None}


def clear_plane_cache() -> None:
    """Drops the cached planes of the last multi-plane file (a lazily read well keeps no decoded file)."""
    _CACHE["key"], _CACHE["array"] = None, None


def _file_key(path: str) -> tuple[str, float, int]:
    status = os.stat(path)
    return os.path.abspath(path), status.st_mtime, status.st_size


def _all_planes(path: str, info: ImageInfo) -> np.ndarray:
    """Every plane of a TIFF or bioio file, `[channels, z, height, width]` (cached: one file)."""
    key = _file_key(path)
    if _CACHE["key"] == key:
        return _CACHE["array"]
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(path) as tiff:
                series = tiff.series[0]
                if _pages_as_planes(tiff):
                    array = np.stack([page.asarray() for page in tiff.pages])
                    axes = "IYX"
                else:
                    array = np.asarray(series.asarray())
                    axes = series.axes
                _, _, _, _, z_axis, c_axis = _tiff_layout(path, tuple(array.shape), axes)
            order = [axes.index(c_axis)] if c_axis else []
            order += [axes.index(z_axis)] if z_axis else []
            rest = [index for index in range(array.ndim) if index not in order and axes[index] not in "YX"]
            array = np.transpose(array, rest + order + [array.ndim - 2, array.ndim - 1])
        else:
            array = np.asarray(_bioio_image(path).get_image_data("CZYX", T=0))
    except errors.InputError:
        raise
    except Exception as error:
        raise errors.InputError(f"{path}: truncated or corrupt image ({error}).") from None
    array = array.reshape(info.num_channels, info.num_pages, info.height, info.width)
    _CACHE["key"], _CACHE["array"] = None, None
    _CACHE["key"], _CACHE["array"] = key, array
    return array


def _read_plane(path: str, page: int, channel: int) -> np.ndarray:
    info = read_info(path)
    if not 0 <= page < info.num_pages:
        raise errors.InputError(f"{path}: has {info.num_pages} plane(s); plane {page} requested.")
    if not 0 <= channel < info.num_channels:
        raise errors.InputError(f"{path}: has {info.num_channels} channel(s); channel {channel} requested.")
    planes = _all_planes(path, info)
    array = planes[channel, page]
    _check_dtype(path, array.dtype)
    return np.ascontiguousarray(array)


def read_pages(path: str | os.PathLike[str], channel: int = 0) -> np.ndarray:
    """Reads every z plane of one channel of a file, `[pages, height, width]`."""
    path = os.fspath(path)
    info = read_info(path)
    return np.stack([read_image(path, page, channel) for page in range(info.num_pages)])


def write_image(path: str | os.PathLike[str], array: np.ndarray, compress_level: int = 1) -> None:
    """Writes a uint8/uint16 image atomically: PNG (2-D) or TIFF (2-D or `[pages, H, W]`).

    Args:
        path: destination; the extension picks the format.
        array: `[height, width]` (or `[pages, height, width]` for TIFF), uint8 or uint16.
        compress_level: PNG zlib level (1 is fast; the result is lossless either way).
    """
    path = os.fspath(path)
    array = np.asarray(array)
    if array.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"write_image needs uint8 or uint16 pixels. Received: {array.dtype}")
    if _is_tiff(path):
        import tifffile

        if array.ndim not in (2, 3):
            raise ValueError(f"A TIFF needs a 2-D or 3-D array. Received shape: {array.shape}")
        with atomic.temporary_path(path) as temporary:
            tifffile.imwrite(temporary, array, photometric="minisblack")
        return
    if array.ndim != 2:
        raise ValueError(f"A PNG needs a 2-D array. Received shape: {array.shape}")
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    with atomic.temporary_path(path) as temporary:
        image.save(temporary, format="PNG", compress_level=compress_level)


# Incremental writers: an image of known size written band of rows by band of rows, so an output of any size
# never exists whole in memory. The file is written under a temporary name beside the target and renamed there by
# `commit`; `abort` (or any error) removes it, so no partial output is left under the final name.
PNG_MAX_SIDE = 2**31 - 1
# Above this many bytes of pixels a TIFF is written as BigTIFF (a classic TIFF addresses 4 GiB).
BIGTIFF_BYTES = 2**32 - 2**25


def _write_error(path: str, error: OSError) -> errors.InputError:
    import errno

    reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
    return errors.InputError(f"{path}: cannot write the image ({reason}); nothing was left under this name.")


class RowWriter:
    """Writes a `[height, width]` image in bands of whole rows, top to bottom.

    Usage: `writer.write_rows(band)` for bands `[rows, width]` in order, then
    `writer.commit()`; `writer.abort()` removes the temporary file. OSError
    while writing (e.g. a full disk) becomes InputError naming the file.
    """

    def __init__(self, path: str | os.PathLike[str], height: int, width: int, dtype: np.dtype | type) -> None:
        self.path = os.fspath(path)
        self.height, self.width, self.dtype = int(height), int(width), np.dtype(dtype)
        self.rows_written = 0
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        atomic.remove_leftovers(self.path)
        import tempfile

        handle, self.temporary = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(self.path),
                                                  dir=directory)
        os.close(handle)

    def write_rows(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.width or self.rows_written + rows.shape[0] > self.height:
            raise ValueError(f"{self.path}: rows of shape {rows.shape} do not fit the image "
                             f"[{self.height}, {self.width}] after {self.rows_written} rows.")
        try:
            self._write(np.ascontiguousarray(rows.astype(self.dtype, copy=False)))
        except OSError as error:
            self.abort()
            raise _write_error(self.path, error) from None
        self.rows_written += rows.shape[0]

    def commit(self) -> None:
        if self.rows_written != self.height:
            self.abort()
            raise ValueError(f"{self.path}: {self.rows_written} of {self.height} rows written.")
        try:
            self._finish()
            atomic._as_created(self.temporary)
            os.replace(self.temporary, self.path)
        except OSError as error:
            self.abort()
            raise _write_error(self.path, error) from None

    def abort(self) -> None:
        import contextlib

        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.temporary)

    def _write(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class PngRowWriter(RowWriter):
    """A grey 8- or 16-bit PNG, its IDAT compressed as the rows arrive (filter 0 per row)."""

    def __init__(self, path: str | os.PathLike[str], height: int, width: int, dtype: np.dtype | type,
                 compress_level: int = 1) -> None:
        import struct
        import zlib

        dtype = np.dtype(dtype)
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"A PNG needs uint8 or uint16 pixels. Received: {dtype}")
        if not (0 < height <= PNG_MAX_SIDE and 0 < width <= PNG_MAX_SIDE):
            raise errors.InputError(f"{os.fspath(path)}: an image of {height} x {width} pixels is too large for PNG "
                                    f"(at most {PNG_MAX_SIDE} per side); use --format=tiff.")
        super().__init__(path, height, width, dtype)
        self._compressor = zlib.compressobj(compress_level)
        self._stream = open(self.temporary, "wb")  # noqa: SIM115 (closed by _finish or _close)
        header = struct.pack(">IIBBBBB", width, height, 8 * dtype.itemsize, 0, 0, 0, 0)
        self._stream.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header))

    def _write(self, rows: np.ndarray) -> None:
        big_endian = rows.astype(rows.dtype.newbyteorder(">"), copy=False).view(np.uint8).reshape(rows.shape[0], -1)
        raw = np.concatenate([np.zeros((rows.shape[0], 1), np.uint8), big_endian], axis=1)
        data = self._compressor.compress(raw.tobytes())
        if data:
            self._stream.write(_png_chunk(b"IDAT", data))

    def _finish(self) -> None:
        self._stream.write(_png_chunk(b"IDAT", self._compressor.flush()) + _png_chunk(b"IEND", b""))
        self._stream.close()

    def _close(self) -> None:
        if not self._stream.closed:
            self._stream.close()


class TiffRowWriter(RowWriter):
    """An uncompressed grey TIFF (BigTIFF above `BIGTIFF_BYTES`) whose pixels are written in place, row by row.

    tifffile lays out the header and an empty contiguous image; the rows are
    written at their offsets (the same file `tifffile.imwrite` writes for the
    whole array, photometric minisblack).
    """

    def __init__(self, path: str | os.PathLike[str], height: int, width: int, dtype: np.dtype | type) -> None:
        import tifffile

        super().__init__(path, height, width, dtype)
        try:
            tifffile.imwrite(self.temporary, shape=(self.height, self.width), dtype=self.dtype,
                             photometric="minisblack", bigtiff=self.height * self.width * self.dtype.itemsize
                             > BIGTIFF_BYTES)
            with tifffile.TiffFile(self.temporary) as tiff:
                page = tiff.pages[0]
                self._offset = int(page.dataoffsets[0]) if page.is_contiguous else None
        except OSError as error:
            self.abort()
            raise _write_error(self.path, error) from None
        if self._offset is None:
            self.abort()
            raise ValueError(f"{self.path}: tifffile laid out a non-contiguous image.")
        self._stream = open(self.temporary, "r+b")  # noqa: SIM115 (closed by _finish or _close)

    def _write(self, rows: np.ndarray) -> None:
        self._stream.seek(self._offset + self.rows_written * self.width * self.dtype.itemsize)
        self._stream.write(rows.astype(rows.dtype.newbyteorder("<"), copy=False).tobytes())

    def _finish(self) -> None:
        self._stream.flush()
        self._stream.close()

    def _close(self) -> None:
        if not getattr(self, "_stream", None) or self._stream.closed:
            return
        self._stream.close()


def row_writer(path: str | os.PathLike[str], height: int, width: int, dtype: np.dtype | type) -> RowWriter:
    """A `PngRowWriter` or `TiffRowWriter` by the extension of `path`."""
    if _is_tiff(os.fspath(path)):
        return TiffRowWriter(path, height, width, dtype)
    return PngRowWriter(path, height, width, dtype)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
