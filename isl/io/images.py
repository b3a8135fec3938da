"""Reading and writing 8- and 16-bit grayscale PNG and TIFF images (no TensorFlow).

Pixel values are kept in their integer type here; `to_float` divides by the
type's maximum (255 or 65535), as the released code's reader did (§3.4).
Every problem with a file (missing, not an image, truncated, colour, an
unsupported bit depth) raises `InputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from isl import errors
from isl.io import atomic

PNG_EXTENSIONS = (".png",)
TIFF_EXTENSIONS = (".tif", ".tiff")
IMAGE_EXTENSIONS = PNG_EXTENSIONS + TIFF_EXTENSIONS
# Extensions that are images we do not read: named in an error, never skipped silently.
UNSUPPORTED_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".czi", ".nd2", ".lif")

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """Header facts of an image file, read without decoding the pixels.

    Attributes:
        height: rows.
        width: columns.
        dtype: numpy dtype of the pixels (uint8 or uint16).
        num_pages: pages (z planes) in a TIFF; 1 for PNG.
    """

    height: int
    width: int
    dtype: np.dtype
    num_pages: int = 1

    @property
    def bit_depth(self) -> int:
        return 8 * self.dtype.itemsize


def is_image_path(path: str) -> bool:
    """True when the extension is one we read (PNG, TIFF)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


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
    if not os.path.isfile(path):
        raise errors.InputError(f"{path}: file not found.")


def _tiff_info(path: str) -> ImageInfo:
    """Size, type and plane count of a TIFF's first series.

    A z-stack may be stored as one page per plane or as one 3-D page; both
    give `num_pages` = number of planes.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            if not len(tiff.pages) or not tiff.series:
                raise errors.InputError(f"{path}: the TIFF has no images.")
            series = tiff.series[0]
            shape = tuple(int(size) for size in series.shape)
            axes = series.axes
            dtype = np.dtype(series.dtype)
    except errors.InputError:
        raise
    except Exception as error:  # tifffile raises many types for bad files.
        raise errors.InputError(f"{path}: not a readable TIFF image ({error}).") from None
    if "S" in axes:
        raise errors.InputError(f"{path}: a colour/multi-sample TIFF (axes {axes}); expected grayscale planes.")
    planes = shape[:-2]
    if len(shape) < 2 or any(size != 1 for size in planes[:-1]):
        raise errors.InputError(
            f"{path}: TIFF of shape {shape} (axes {axes}); expected one plane or one z-stack of 2-D planes."
        )
    _check_dtype(path, dtype)
    return ImageInfo(height=shape[-2], width=shape[-1], dtype=dtype, num_pages=planes[-1] if planes else 1)


def _check_dtype(path: str, dtype: np.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise errors.InputError(
            f"{path}: pixel type {dtype}; only 8- and 16-bit unsigned images are read."
        )


def read_info(path: str | os.PathLike[str]) -> ImageInfo:
    """Reads an image's size, type and page count from its header.

    Raises:
        InputError: naming the file when it is missing or not a PNG/TIFF image.
    """
    path = os.fspath(path)
    _check_exists(path)
    if _is_tiff(path):
        return _tiff_info(path)
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise errors.InputError(f"{path}: not a PNG image (found {image.format}).")
            width, height = image.size
            mode = image.mode
    except errors.InputError:
        raise
    except Exception as error:
        raise errors.InputError(f"{path}: not a readable PNG image ({error}).") from None
    return ImageInfo(height=int(height), width=int(width), dtype=_pil_dtype(path, mode))


def read_image(path: str | os.PathLike[str], page: int = 0) -> np.ndarray:
    """Reads one plane as a 2-D uint8 or uint16 array, `[height, width]`.

    Args:
        path: a PNG or TIFF file.
        page: the TIFF page (z plane) to read; PNG files have only page 0.

    Raises:
        InputError: naming the file when it is missing, truncated, corrupt,
            colour, or not 8/16-bit.
    """
    path = os.fspath(path)
    _check_exists(path)
    if _is_tiff(path):
        return _read_tiff_page(path, page)
    if page != 0:
        raise errors.InputError(f"{path}: a PNG has one plane; page {page} requested.")
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise errors.InputError(f"{path}: not a PNG image (found {image.format}).")
            dtype = _pil_dtype(path, image.mode)
            image.load()
            array = np.asarray(image)
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


def _read_tiff_page(path: str, page: int) -> np.ndarray:
    import tifffile

    info = _tiff_info(path)
    if not 0 <= page < info.num_pages:
        raise errors.InputError(f"{path}: has {info.num_pages} plane(s); plane {page} requested.")
    try:
        with tifffile.TiffFile(path) as tiff:
            if len(tiff.pages) == info.num_pages:
                array = tiff.pages[page].asarray()
            else:
                array = tiff.series[0].asarray().reshape(info.num_pages, info.height, info.width)[page]
    except Exception as error:
        raise errors.InputError(f"{path}: truncated or corrupt TIFF ({error}).") from None
    array = np.asarray(array).reshape(info.height, info.width) if array.size == info.height * info.width else array
    if array.shape != (info.height, info.width):
        raise errors.InputError(f"{path}: plane {page} has shape {array.shape}; expected 2-D.")
    _check_dtype(path, array.dtype)
    return np.ascontiguousarray(array)


def read_pages(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads every page of a (multi-page) TIFF or a PNG, `[pages, height, width]`."""
    path = os.fspath(path)
    info = read_info(path)
    return np.stack([read_image(path, page) for page in range(info.num_pages)])


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
