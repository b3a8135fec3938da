"""The original's error panels (isl_reference.md §5.2-§5.3); NumPy only.

A panel is a grid of tiles, one row per (z, channel) and one column per
image kind. Every tile has a 4-px border whose colour says what it shows:

| border | colour | shows |
|---|---|---|
| purple (102, 0, 255)/255 | `PURPLE` | prediction statistics |
| turquoise (64, 224, 208)/255 | `TURQUOISE` | ground truth |
| white | `WHITE` | additive error |
| black | `BLACK` | subtractive error |
| mango (255, 130, 67)/255 | `MANGO` | presence mask |

Error images: the prediction is painted in orange (1, 0.5, 0) and the truth in
blue (0, 0.5, 1). Additive error: their sum, grey where they agree, orange
tint for false positives, blue for false negatives. Subtractive error:
`d = prediction - truth`, positive part orange, negative part blue, black
where correct.

Files are 16-bit RGB PNGs (value * 65535). The original swapped channels to
BGR only because OpenCV writes BGR, so its files on disk are RGB, as here.
Panels above 2**22 pixels are downscaled bilinearly, as in the original.
Beyond the original, `bits=8` writes 8-bit RGB PNGs downscaled to at most
`MAX_MAIL_PIXELS` (2**21) pixels, small enough to mail (`isl predict
--panel_bits=8`).

Beyond the original, a panel given its row names is labelled: a strip above
names each column (`column_names`), a strip on the left names each row's
channel, white on black, and a strip below gives each column's colour bar
with its unit (`labelled`, `colour_bars`).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

PURPLE = (102 / 255, 0.0, 1.0)
TURQUOISE = (64 / 255, 224 / 255, 208 / 255)
RED = (1.0, 0.0, 0.0)
WHITE = (1.0, 1.0, 1.0)
BLACK = (0.0, 0.0, 0.0)
MANGO = (1.0, 130 / 255, 67 / 255)
PREDICTION_ORANGE = (1.0, 0.5, 0.0)
TARGET_BLUE = (0.0, 0.5, 1.0)

BORDER_PIXELS = 4
MAX_PANEL_PIXELS = 2**22
MAX_MAIL_PIXELS = 2**21
PANEL_BITS = (16, 8)

SIMPLIFIED_STATISTICS = ("median",)
FULL_STATISTICS = ("mode", "median", "mean", "std")
ERROR_STATISTICS_FULL = ("mode", "median", "mean")


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile: an RGB image `[h, w, 3]` in [0, 1] and its border colour."""

    image: np.ndarray
    border: tuple[float, float, float]


def grey(image: np.ndarray) -> np.ndarray:
    """`[h, w]` -> `[h, w, 3]`, clipped to [0, 1], NaN as 0."""
    image = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    return np.repeat(image[..., np.newaxis], 3, axis=-1)


def additive_error(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Truth in blue plus prediction in orange, `[h, w, 3]` (grey if equal)."""
    prediction = np.clip(np.nan_to_num(np.asarray(prediction, np.float32)), 0, 1)[..., np.newaxis]
    truth = np.clip(np.nan_to_num(np.asarray(truth, np.float32)), 0, 1)[..., np.newaxis]
    image = prediction * np.asarray(PREDICTION_ORANGE, np.float32) + truth * np.asarray(TARGET_BLUE, np.float32)
    return np.clip(image, 0.0, 1.0)


def subtractive_error(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Positive part of prediction - truth in orange, negative part in blue."""
    difference = np.nan_to_num(np.asarray(prediction, np.float32) - np.asarray(truth, np.float32))[..., np.newaxis]
    image = np.maximum(difference, 0) * np.asarray(PREDICTION_ORANGE, np.float32) + np.maximum(
        -difference, 0
    ) * np.asarray(TARGET_BLUE, np.float32)
    return np.clip(image, 0.0, 1.0)


def bordered(tile: Tile) -> np.ndarray:
    """The tile with its 4-px border, `[h + 8, w + 8, 3]`."""
    height, width = tile.image.shape[:2]
    image = np.empty((height + 2 * BORDER_PIXELS, width + 2 * BORDER_PIXELS, 3), np.float32)
    image[...] = np.asarray(tile.border, np.float32)
    image[BORDER_PIXELS : BORDER_PIXELS + height, BORDER_PIXELS : BORDER_PIXELS + width] = tile.image
    return image


def assemble(rows: Sequence[Sequence[Tile]]) -> np.ndarray:
    """Concatenates bordered tiles into a panel `[rows * (h+8), cols * (w+8), 3]`."""
    if not rows or not rows[0]:
        raise ValueError("A panel needs at least one row and one column.")
    return np.concatenate([np.concatenate([bordered(tile) for tile in row], axis=1) for row in rows], axis=0)


def error_row(
    statistics: Mapping[str, np.ndarray],
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    simplified: bool = True,
) -> list[Tile]:
    """One panel row for one (z, channel).

    Simplified (the original's default, 3 tiles): [median: purple]
    [truth: turquoise] [subtractive error of the median: black].
    Full (`simplified=False`, 12 tiles): [mode, median, mean, std: purple]
    [truth: turquoise] [additive error of mode, median, mean: white]
    [subtractive error of mode, median, mean: black] [mask: mango].

    Args:
        statistics: name -> `[h, w]`; needs "median" (and mode, mean, std
            when not simplified).
        truth: `[h, w]`.
        mask: `[h, w]` presence mask (full variant; ones if None).
    """
    names = SIMPLIFIED_STATISTICS if simplified else FULL_STATISTICS
    missing = [name for name in names if name not in statistics]
    if missing:
        raise ValueError(f"The {'simplified' if simplified else 'full'} panel needs statistics {missing}.")
    tiles = [Tile(grey(statistics[name]), PURPLE) for name in names]
    tiles.append(Tile(grey(truth), TURQUOISE))
    error_names = SIMPLIFIED_STATISTICS if simplified else ERROR_STATISTICS_FULL
    if not simplified:
        tiles += [Tile(additive_error(statistics[name], truth), WHITE) for name in error_names]
    tiles += [Tile(subtractive_error(statistics[name], truth), BLACK) for name in error_names]
    if not simplified:
        tiles.append(Tile(grey(np.ones_like(truth) if mask is None else mask), MANGO))
    return tiles


def column_names(simplified: bool = True) -> list[str]:
    """What each column of `error_row` shows, in order."""
    if simplified:
        return ["median", "truth", "median - truth"]
    return ([*FULL_STATISTICS, "truth"] + [f"{name} + truth" for name in ERROR_STATISTICS_FULL]
            + [f"{name} - truth" for name in ERROR_STATISTICS_FULL] + ["mask"])


def error_panel(
    statistics: Mapping[str, np.ndarray],
    truth: np.ndarray,
    masks: np.ndarray | None = None,
    simplified: bool = True,
    row_names: Sequence[str] | None = None,
) -> np.ndarray:
    """A whole panel, one row per channel.

    Args:
        statistics: name -> `[h, w, num_rows]`.
        truth: `[h, w, num_rows]`.
        masks: `[h, w, num_rows]` or None.
        row_names: the channel of each row; given, the panel is `labelled`
            with them and the column names (None: the original's bare grid).

    Returns:
        `[num_rows * (h + 8), num_columns * (w + 8), 3]` float32 in [0, 1]
        (plus the label strips), downscaled when above 2**22 pixels.
    """
    rows = []
    for index in range(truth.shape[-1]):
        row_statistics = {name: value[..., index] for name, value in statistics.items()}
        row_mask = None if masks is None else masks[..., index]
        rows.append(error_row(row_statistics, truth[..., index], row_mask, simplified))
    panel = assemble(rows)
    if row_names is not None:
        if len(row_names) != len(rows):
            raise ValueError(f"{len(row_names)} row names for {len(rows)} panel rows.")
        panel = labelled(panel, row_names, column_names(simplified))
    return limit_size(panel)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or without FreeType: the small bitmap font.
        return ImageFont.load_default()


def _text_strip(texts: Sequence[str], widths: Sequence[int], height: int, size: int) -> np.ndarray:
    """White texts on black, side by side, each centred in its width: `[height, sum(widths)]` in [0, 1]."""
    from PIL import Image, ImageDraw

    strip = Image.new("L", (int(sum(widths)), height), 0)
    draw = ImageDraw.Draw(strip)
    font = _font(size)
    left = 0
    for text, width in zip(texts, widths):
        box = draw.textbbox((0, 0), text, font=font)
        x = left + max(0, (width - (box[2] - box[0])) // 2) - box[0]
        y = (height - (box[3] - box[1])) // 2 - box[1]
        draw.text((x, y), text, fill=255, font=font)
        left += width
    return np.asarray(strip, np.float32) / 255.0


def colour_bars(columns: Sequence[str], tile_width: int, size: int) -> np.ndarray:
    """Under each column, its colour scale and unit: `[4 * size, len(columns) * tile_width, 3]` in [0, 1].

    Images (statistics, truth): a grey ramp, 0 to 1 = 8-bit level 255. Subtractive
    errors: blue (truth brighter) through black to orange (prediction brighter),
    -1 to +1. Additive errors: the two colours and their grey sum. The mask:
    white = labelled.
    """
    from PIL import Image, ImageDraw

    height = 5 * size
    footer = np.zeros((height, len(columns) * tile_width, 3), np.float32)
    margin = max(2, tile_width // 12)
    bar_width = max(1, tile_width - 2 * margin)
    ramp = np.linspace(0.0, 1.0, bar_width, dtype=np.float32)
    texts = []
    for index, name in enumerate(columns):
        left = index * tile_width + margin
        bar = footer[size // 2 : size // 2 + size, left : left + bar_width]
        if name.endswith("- truth"):
            signed = 2 * ramp - 1
            bar[:] = subtractive_error(np.maximum(signed, 0), np.maximum(-signed, 0))[np.newaxis]
            texts.append((left, ("-1", "+1"), "blue < 0 < orange"))
        elif name.endswith("+ truth"):
            third = bar_width // 3
            bar[:, :third] = PREDICTION_ORANGE
            bar[:, third : 2 * third] = TARGET_BLUE
            bar[:, 2 * third :] = 0.5
            texts.append((left, ("pred.", "truth", "both"), ""))
        elif name == "mask":
            bar[:] = 1.0
            texts.append((left, (), "white: labelled"))
        else:
            bar[:] = grey(ramp)[np.newaxis]
            texts.append((left, ("0", "1"), "1 = level 255"))
    image = Image.fromarray(np.round(footer * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    font = _font(size)
    white = (255, 255, 255)
    for left, ticks, unit in texts:
        # Tick labels spread under the bar (first at its left end, last at its right end); the unit below them.
        for position, tick in enumerate(ticks):
            width = draw.textbbox((0, 0), tick, font=font)[2]
            x = left + round((bar_width - width) * position / max(1, len(ticks) - 1))
            draw.text((x, size // 2 + size + size // 4), tick, fill=white, font=font)
        if unit:
            draw.text((left, size // 2 + 2 * size + size // 2), unit, fill=white, font=font)
    return np.asarray(image, np.float32) / 255.0


def labelled(panel: np.ndarray, row_names: Sequence[str], columns: Sequence[str]) -> np.ndarray:
    """The panel `[H, W, 3]` with its column names above, its row names on the left and colour bars below.

    Rows and columns are equal divisions of the panel (bordered tiles). The
    text is sized to the tiles (at least 12 px) and written white on black.
    """
    height, width = panel.shape[:2]
    tile_height, tile_width = height // len(row_names), width // len(columns)
    size = max(12, min(tile_height, tile_width) // 12)
    strip_height = 2 * size
    font = _font(size)
    name_width = max(font.getbbox(name)[2] for name in row_names) + size
    header = _text_strip(columns, [tile_width] * len(columns), strip_height, size)
    # Row names: one strip per row, written horizontally, then stacked.
    side = np.concatenate(
        [_text_strip([name], [name_width], tile_height, size) for name in row_names], axis=0)
    side = np.pad(side, ((0, height - side.shape[0]), (0, 0)))
    footer = colour_bars(columns, tile_width, size)
    labelled_panel = np.zeros((strip_height + height + footer.shape[0], name_width + width, 3), np.float32)
    labelled_panel[strip_height : strip_height + height, name_width:] = panel
    labelled_panel[:strip_height, name_width : name_width + header.shape[1]] = header[..., np.newaxis]
    labelled_panel[strip_height : strip_height + height, :name_width] = side[..., np.newaxis]
    labelled_panel[strip_height + height :, name_width : name_width + footer.shape[1]] = footer
    return labelled_panel


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of `[h, w, c]` (pixel centres aligned, half-pixel rule)."""

    def weights(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, source - 1)
        return low, high, (position - low).astype(np.float32)

    low, high, fraction = weights(image.shape[0], height)
    image = image[low] * (1 - fraction)[:, None, None] + image[high] * fraction[:, None, None]
    low, high, fraction = weights(image.shape[1], width)
    return image[:, low] * (1 - fraction)[None, :, None] + image[:, high] * fraction[None, :, None]


def limit_size(panel: np.ndarray, max_pixels: int = MAX_PANEL_PIXELS) -> np.ndarray:
    """Bilinearly downscales a panel above `max_pixels` pixels (§5.2)."""
    height, width = panel.shape[:2]
    if height * width <= max_pixels:
        return panel
    scale = (max_pixels / (height * width)) ** 0.5
    return resize_bilinear(panel, max(1, int(height * scale)), max(1, int(width * scale)))


def to_uint16(panel: np.ndarray) -> np.ndarray:
    """`[h, w, 3]` float in [0, 1] -> uint16 (value * 65535, rounded)."""
    return np.round(np.clip(panel, 0.0, 1.0) * 65535).astype(np.uint16)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png_rgb16(image: np.ndarray, compress_level: int = 6) -> bytes:
    """A 16-bit RGB PNG of `[h, w, 3]` uint16 (Pillow cannot write this mode)."""
    image = np.asarray(image)
    if image.dtype != np.uint16 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_png_rgb16 needs [h, w, 3] uint16. Received: {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    rows = np.ascontiguousarray(image.astype(">u2")).view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # Filter 0 per row.
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, compress_level))
        + _chunk(b"IEND", b"")
    )


def decode_png_rgb16(data: bytes) -> np.ndarray:
    """Reads back a PNG written by `encode_png_rgb16` (filter 0 only)."""
    position, idat, header = 8, b"", None
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    if header is None or header[2:4] != (16, 2):
        raise ValueError("Not a 16-bit RGB PNG.")
    width, height = header[0], header[1]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * 6)
    if raw[:, 0].any():
        raise ValueError("Only PNG filter 0 is supported.")
    return raw[:, 1:].copy().view(">u2").reshape(height, width, 3).astype(np.uint16)


def write_panel(path: str | os.PathLike[str], panel: np.ndarray, bits: int = 16) -> str:
    """Writes `[h, w, 3]` in [0, 1] as a 16-bit RGB PNG (or 8-bit, at most `MAX_MAIL_PIXELS`), atomically."""
    from isl.io import atomic

    path = os.fspath(path)
    if bits == 16:
        atomic.write_bytes(path, encode_png_rgb16(to_uint16(panel)))
        return path
    if bits != 8:
        raise ValueError(f"Panel bits must be 16 or 8. Received: {bits}")
    import io

    from PIL import Image

    small = limit_size(np.asarray(panel, np.float32), MAX_MAIL_PIXELS)
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(small, 0.0, 1.0) * 255).astype(np.uint8)).save(buffer, format="PNG",
                                                                                    optimize=True)
    atomic.write_bytes(path, buffer.getvalue())
    return path


class StreamingPanel:
    """An `error_panel(..., row_names=...)` built from bands of image rows, in bounded memory.

    The panel of an image of any size is the labelled grid of `error_panel`
    downscaled by `limit_size` to at most `max_pixels` pixels. The bilinear
    downscale is linear and separable, so each band of panel rows adds its
    weighted share to the small result and is dropped: memory is the result
    (at most `max_pixels` RGB pixels) plus one band of panel rows (at most
    `BAND_ROWS` rows), whatever the image size. The result equals
    `error_panel` up to float rounding (the two resize passes run in the other
    order).

    Usage: `add(channel_row, image_row0, statistics, truth, mask)` for every
    band of every row (any order), then `result()`.

    Args:
        height, width: the image (tile) size.
        row_names: one per panel row.
        simplified: 3 columns (the original's default) or 12.
        max_pixels: the `limit_size` bound.
    """

    BAND_ROWS = 64

    def __init__(self, height: int, width: int, row_names: Sequence[str], simplified: bool = True,
                 max_pixels: int = MAX_PANEL_PIXELS) -> None:
        self.height, self.width = int(height), int(width)
        self.row_names = list(row_names)
        self.simplified = simplified
        self.columns = column_names(simplified)
        self.tile_height = self.height + 2 * BORDER_PIXELS
        self.tile_width = self.width + 2 * BORDER_PIXELS
        bare_height = len(self.row_names) * self.tile_height
        bare_width = len(self.columns) * self.tile_width
        # The layout of `labelled`.
        self.size = max(12, min(self.tile_height, self.tile_width) // 12)
        self.strip_height = 2 * self.size
        font = _font(self.size)
        self.name_width = max(font.getbbox(name)[2] for name in self.row_names) + self.size
        # The strips scale with the tiles (text 1/12 of a tile side): made once, added in bands, not kept.
        header = _text_strip(self.columns, [self.tile_width] * len(self.columns), self.strip_height, self.size)
        footer = colour_bars(self.columns, self.tile_width, self.size)
        self.panel_height = self.strip_height + bare_height + footer.shape[0]
        self.panel_width = self.name_width + bare_width
        if self.panel_height * self.panel_width > max_pixels:
            scale = (max_pixels / (self.panel_height * self.panel_width)) ** 0.5
            out_height = max(1, int(self.panel_height * scale))
            out_width = max(1, int(self.panel_width * scale))
            self._rows = _resize_weights(self.panel_height, out_height)
            self._columns = _resize_weights(self.panel_width, out_width)
        else:
            out_height, out_width = self.panel_height, self.panel_width
            self._rows = self._columns = None
        self._result = np.zeros((out_height, out_width, 3), np.float32)
        self._side_row, self._side = -1, None
        for strip, top in ((header[..., np.newaxis], 0), (footer, self.strip_height + bare_height)):
            for first in range(0, strip.shape[0], self.BAND_ROWS):
                part = strip[first : first + self.BAND_ROWS]
                rows = np.zeros((part.shape[0], self.panel_width, 3), np.float32)
                rows[:, self.name_width : self.name_width + part.shape[1]] = part
                self._add_panel_rows(top + first, rows)
        del header, footer
        for row in range(len(self.row_names)):  # The tiles' top and bottom borders.
            top = self.strip_height + row * self.tile_height
            self._add_panel_rows(top, self._border_rows(row, 0, BORDER_PIXELS))
            self._add_panel_rows(top + BORDER_PIXELS + self.height,
                                 self._border_rows(row, BORDER_PIXELS + self.height, self.tile_height))

    @property
    def shape(self) -> tuple[int, int]:
        """The result's (height, width)."""
        return self._result.shape[0], self._result.shape[1]

    def add(self, row: int, image_row0: int, statistics: Mapping[str, np.ndarray], truth: np.ndarray,
            mask: np.ndarray | None = None) -> None:
        """Adds image rows `[image_row0, image_row0 + n)` of panel row `row` (`error_row`'s arguments, `[n, width]`)."""
        count = truth.shape[0]
        for first in range(0, count, self.BAND_ROWS):
            part = slice(first, min(count, first + self.BAND_ROWS))
            tiles = error_row({name: value[part] for name, value in statistics.items()}, truth[part],
                              None if mask is None else mask[part], self.simplified)
            top = BORDER_PIXELS + image_row0 + first
            band = self._border_rows(row, top, top + tiles[0].image.shape[0])
            for column, tile in enumerate(tiles):
                left = self.name_width + column * self.tile_width + BORDER_PIXELS
                band[:, left : left + self.width] = tile.image
            self._add_panel_rows(self.strip_height + row * self.tile_height + top, band)

    def result(self) -> np.ndarray:
        """The panel `[height, width, 3]` float32 in [0, 1], as `error_panel` gives it."""
        return self._result

    def _side_strip(self, row: int) -> np.ndarray:
        if self._side_row != row:
            self._side = _text_strip([self.row_names[row]], [self.name_width], self.tile_height, self.size)
            self._side_row = row
        return self._side

    def _border_rows(self, row: int, start: int, end: int) -> np.ndarray:
        """Panel rows `[start, end)` of a tile row (tile coordinates) with the side strip and border colours."""
        rows = np.zeros((end - start, self.panel_width, 3), np.float32)
        rows[:, : self.name_width] = self._side_strip(row)[start:end, :, np.newaxis]
        borders = [PURPLE] * (1 if self.simplified else 4) + [TURQUOISE]
        borders += [BLACK] if self.simplified else [WHITE] * 3 + [BLACK] * 3 + [MANGO]
        for column, colour in enumerate(borders):
            left = self.name_width + column * self.tile_width
            rows[:, left : left + self.tile_width] = np.asarray(colour, np.float32)
        return rows

    def _add_panel_rows(self, start: int, rows: np.ndarray) -> None:
        """Adds panel rows `[start, start + n)` `[n, panel_width, 3]` to the (downscaled) result."""
        if self._rows is None:
            self._result[start : start + rows.shape[0]] = rows
            return
        low, high, fraction = self._columns
        rows = rows[:, low] * (1 - fraction)[None, :, None] + rows[:, high] * fraction[None, :, None]
        low, high, fraction = self._rows
        end = start + rows.shape[0]
        for source, weight in ((low, 1 - fraction), (high, fraction)):
            inside = np.nonzero((source >= start) & (source < end))[0]
            if inside.size:
                self._result[inside] += rows[source[inside] - start] * weight[inside, None, None]


def _resize_weights(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`resize_bilinear`'s (low, high, fraction) along one axis."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, source - 1)
    return low, high, (position - low).astype(np.float32)
