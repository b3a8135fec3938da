"""The evaluation report: each region at its own shape, histograms with axis ticks."""

from __future__ import annotations

import numpy as np

from isl.eval import metrics
from isl.eval import report


def _row(prediction, truth, mask, give_mask=False):
    row = {"channel": "DAPI_CONFOCAL", "prediction": np.where(mask, prediction, 0),
           "truth": np.where(mask, truth, 0), "histogram": metrics.histogram_2d(prediction, truth, mask),
           "caption": "r = 1.000"}
    return {**row, "mask": mask} if give_mask else row


def test_a_region_is_drawn_at_its_own_shape_not_inside_the_whole_image():
    # Rows 96:128 of a 128 x 96 well scored: a 32 x 96 strip (1:3), the rest zeroed by the caller.
    prediction = np.full((128, 96), 0.5, np.float32)
    mask = np.zeros((128, 96), bool)
    mask[96:] = True
    for row in (_row(prediction, prediction, mask), _row(prediction, prediction, mask, give_mask=True)):
        assert report.region_box(row) == (slice(96, 128), slice(0, 96))
        figure = report.report_figure([row], title="strip")
        header = 24 + report.CAPTION + report.COLOUR_BAR  # Above: titles and the colour bars (a grey ramp).
        grey_rows, grey_columns = np.nonzero(np.all(figure[header:] == 128, axis=-1))
        # Two grey tiles (prediction, truth) of the strip's shape, 1:3, with no black around them.
        assert report.tile_shape(32, 96) == (171, 512)
        assert grey_rows.max() - grey_rows.min() + 1 == 171
        assert len(grey_rows) == 2 * 171 * 512
    assert report.tile_shape(256, 768) == (171, 512)  # Wide regions are capped at MAX_WIDTH.
    assert report.tile_shape(1024, 768) == (256, 192)


def test_histograms_have_ticks_and_labels_on_both_axes():
    from PIL import Image, ImageDraw

    size, left, top = report.TILE, 40, 20
    image = Image.new("RGB", (left + size + 10, top + size + 40), (255, 255, 255))
    report.draw_axes(ImageDraw.Draw(image), left, top, size)
    pixels = np.asarray(image)
    for value in report.TICKS:
        x = left + round(value * (size - 1))
        y = top + size - 1 - round(value * (size - 1))
        assert np.all(pixels[top + size + 1 : top + size + 4, x] == 0), value  # x tick below the plot.
        assert np.all(pixels[y, left - 4 : left - 1] == 0), value  # y tick left of it.
    # Tick labels: dark text under the x axis and left of the y axis.
    assert (pixels[top + size + 6 : top + size + 14, left : left + size] < 128).any()
    assert (pixels[top : top + size, : left - 6] < 128).any()


def test_image_columns_have_colour_bars_and_a_pit_histogram_column_is_drawn_when_given():
    prediction = np.random.default_rng(0).random((40, 60)).astype(np.float32)
    mask = np.ones((40, 60), bool)
    plain = report.report_figure([_row(prediction, prediction, mask)])
    pit = [0.3, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1, 0.2]
    with_pit = report.report_figure([{**_row(prediction, prediction, mask), "pit_histogram": pit}])
    assert with_pit.shape[1] == plain.shape[1] + report.AXIS_LEFT + report.PIT_WIDTH + report.GAP
    bar = plain[24 + report.CAPTION - 4 + report.BAR_HEIGHT // 2, report.GAP : report.GAP + 100]
    assert bar[0].max() < 10 and bar[-1].min() > 100 and np.all(np.diff(bar[:, 0].astype(int)) >= 0)  # 0 -> 1 ramp.
    nan_pit = report.report_figure([{**_row(prediction, prediction, mask), "pit_histogram": [float("nan")] * 10}])
    assert nan_pit.shape == plain.shape  # A prediction without calibration files gets no PIT column.
