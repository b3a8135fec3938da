"""Error panels: sizes, border colours, error colours, 16-bit RGB files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from isl.eval import panels


def _statistics(height: int, width: int, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.random((height, width, rows)).astype(np.float32) for name in ("mode", "median", "mean", "std")}


@pytest.mark.parametrize("simplified,columns", [(True, 3), (False, 12)])
def test_panel_size_is_rows_and_columns_of_bordered_tiles(simplified, columns):
    statistics = _statistics(10, 14, 3)
    panel = panels.error_panel(statistics, statistics["median"] * 0, None, simplified)
    assert panel.shape == (3 * (10 + 8), columns * (14 + 8), 3)


def test_border_colours_mark_prediction_truth_errors_and_mask():
    statistics = _statistics(6, 6, 1)
    panel = panels.error_panel(statistics, np.zeros((6, 6, 1), np.float32), None, simplified=False)
    tile = 6 + 8
    expected = [panels.PURPLE] * 4 + [panels.TURQUOISE] + [panels.WHITE] * 3 + [panels.BLACK] * 3 + [panels.MANGO]
    for column, colour in enumerate(expected):
        np.testing.assert_allclose(panel[0, column * tile + 1], colour, atol=1e-6)  # Top border row.
        np.testing.assert_allclose(panel[tile - 2, column * tile + 3], colour, atol=1e-6)  # Bottom border.
    assert panels.PURPLE == pytest.approx((102 / 255, 0, 1))
    assert panels.MANGO == pytest.approx((1, 130 / 255, 67 / 255))


def test_error_colours_orange_false_positive_blue_false_negative_grey_agreement():
    prediction = np.array([[0.8, 0.0, 0.4]])
    truth = np.array([[0.0, 0.6, 0.4]])
    subtractive = panels.subtractive_error(prediction, truth)
    np.testing.assert_allclose(subtractive[0, 0], [0.8, 0.4, 0.0], atol=1e-6)  # Orange (1, 0.5, 0) * 0.8.
    np.testing.assert_allclose(subtractive[0, 1], [0.0, 0.3, 0.6], atol=1e-6)  # Blue (0, 0.5, 1) * 0.6.
    np.testing.assert_allclose(subtractive[0, 2], [0, 0, 0], atol=1e-6)
    additive = panels.additive_error(prediction, truth)
    np.testing.assert_allclose(additive[0, 2], [0.4, 0.4, 0.4], atol=1e-6)  # Grey where equal.


def test_large_panels_are_downscaled_and_files_are_16_bit_rgb(tmp_path):
    big = np.random.default_rng(0).random((2400, 1600, 3)).astype(np.float32)
    limited = panels.limit_size(big)
    assert limited.shape[0] * limited.shape[1] <= panels.MAX_PANEL_PIXELS
    assert limited.shape[0] / limited.shape[1] == pytest.approx(1.5, rel=0.01)
    small = np.random.default_rng(1).random((5, 7, 3)).astype(np.float32)
    path = panels.write_panel(tmp_path / "panel.png", small)
    data = open(path, "rb").read()
    assert data[24:26] == bytes([16, 2])  # IHDR bit depth 16, colour type RGB.
    np.testing.assert_array_equal(panels.decode_png_rgb16(data), panels.to_uint16(small))


def test_a_panel_given_row_names_labels_each_channel_row_and_each_column():
    statistics = _statistics(40, 60, 2)
    truth = statistics["median"][..., ::-1]
    bare = panels.error_panel(statistics, truth, None, simplified=True)
    named = panels.error_panel(statistics, truth, None, simplified=True, row_names=["DAPI_CONFOCAL", "MAP2_CONFOCAL"])
    size = 12  # The label size for 40 x 60 tiles: top strip 2 * size, colour bars 5 * size below.
    top, bottom = 2 * size, named.shape[0] - 5 * size
    left = named.shape[1] - bare.shape[1]
    assert bottom - top == bare.shape[0] and left > 0
    np.testing.assert_array_equal(named[top:bottom, left:], bare)  # The grid itself is the original's.
    tile_height, tile_width = 40 + 8, 60 + 8
    for column in range(3):  # White text over every column...
        assert named[:top, left + column * tile_width : left + (column + 1) * tile_width].max() > 0.9
    for row in range(2):  # ...and left of every row.
        assert named[top + row * tile_height : top + (row + 1) * tile_height, :left].max() > 0.9
    other = panels.error_panel(statistics, truth, None, simplified=True, row_names=["NFH_CONFOCAL", "CELLMASK"])
    assert not np.array_equal(other[top:bottom, :left], named[top:bottom, :left])  # Names drawn, not a fixed strip.
    assert panels.column_names() == ["median", "truth", "median - truth"]
    assert len(panels.column_names(simplified=False)) == 12
    with pytest.raises(ValueError, match="2 panel rows"):
        panels.error_panel(statistics, truth, None, row_names=["DAPI_CONFOCAL"])


def test_eight_bit_panels_are_downscaled_to_mail_size_and_far_smaller(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    panel = np.clip(rng.normal(0.3, 0.1, (1800, 1400, 3)), 0, 1).astype(np.float32)  # 2.5 M pixels.
    sixteen = panels.write_panel(tmp_path / "16.png", panel)
    eight = panels.write_panel(tmp_path / "8.png", panel, bits=8)
    image = Image.open(eight)
    assert image.mode == "RGB" and image.size[0] * image.size[1] <= panels.MAX_MAIL_PIXELS
    assert abs(image.size[0] / image.size[1] - 1400 / 1800) < 0.01
    assert os.path.getsize(eight) < os.path.getsize(sixteen) / 2
    with pytest.raises(ValueError, match="16 or 8"):
        panels.write_panel(tmp_path / "bad.png", panel, bits=12)


def test_labelled_panels_carry_a_colour_bar_under_each_column():
    panel = np.zeros((2 * 60, 3 * 80, 3), np.float32)
    result = panels.labelled(panel, ["DAPI", "MAP2"], panels.column_names())
    size = max(12, min(60, 80) // 12)
    footer = result[-5 * size :]
    assert result.shape[0] == 2 * size + 120 + 5 * size
    bar_row = footer[size // 2 + size // 2, result.shape[1] - 3 * 80 :]
    grey_bar = bar_row[: 80 - 1]
    assert grey_bar[:, 0].max() > 0.9 and np.allclose(grey_bar[:, 0], grey_bar[:, 2])  # A grey ramp to white.
    error_bar = bar_row[2 * 80 :]
    assert error_bar[:, 2].max() > 0.9 and error_bar[:, 0].max() > 0.9  # Blue and orange ends.


@pytest.mark.parametrize("simplified", [True, False])
@pytest.mark.parametrize("max_pixels", [panels.MAX_PANEL_PIXELS, 20_000])
def test_streaming_panel_equals_the_whole_panel(simplified, max_pixels):
    rng = np.random.default_rng(0)
    height, width, rows = 70, 53, 3
    statistics = {name: rng.random((height, width, rows)).astype(np.float32) for name in panels.FULL_STATISTICS}
    truth = rng.random((height, width, rows)).astype(np.float32)
    masks = (rng.random((height, width, rows)) > 0.3).astype(np.float32)
    names = ["DAPI", "NFH", "z 1/26"]
    whole = panels.limit_size(panels.error_panel(statistics, truth, masks, simplified, row_names=names), max_pixels)
    streamed = panels.StreamingPanel(height, width, names, simplified, max_pixels)
    for row in reversed(range(rows)):  # Any order of rows and bands.
        for first in (54, 18, 0, 36):
            part = slice(first, first + 18)
            streamed.add(row, first, {name: value[part, :, row] for name, value in statistics.items()},
                         truth[part, :, row], masks[part, :, row])
    result = streamed.result()
    assert result.shape == whole.shape == streamed.shape + (3,)
    if max_pixels == panels.MAX_PANEL_PIXELS:
        np.testing.assert_array_equal(result, whole)
    else:  # Downscaled: the two resize passes run in the other order.
        assert whole.shape[0] * whole.shape[1] <= max_pixels
        np.testing.assert_allclose(result, whole, atol=1e-6)
