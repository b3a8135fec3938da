"""Band-by-band output of the kinds that predict windows: the U-Net regression, the read-out, the ensemble.

The paper heads stream their rows through `isl.infer.well.WellWriter`; the
other kinds predict a window at a time (`ModelKind.predict_window`'s shape)
and hand each band of output rows here:

* `BandWriter` writes every statistic image and calibration TIFF row by row
  (`isl.io.images.row_writer`) and draws the target panel (median, truth,
  error) band by band (`isl.eval.panels.StreamingPanel`), reading the truth of
  each band only (`isl.infer.well.truth_window`): nothing of the image's size
  is held, so memory is one band's whatever the image area;
* `row_bands` cuts a window into bands of rows;
* `expected_peak` / `check_memory` model the peak before the work, print it
  ("Expected peak memory: ..."), and refuse (exit 2) naming the flag to change
  when it would not fit the free memory, as the heads' `isl predict` does.

The kinds keep their own arithmetic (`isl.infer.regression`, `isl.infer.readout`,
`isl.infer.ensemble`); this module owns how a band is written and what the
memory figure says.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.eval import panels as panels_lib
from isl.infer import well as well_lib
from isl.io import images
from isl.model import geometry as geometry_lib

# The bands' own arrays (statistics, distributions, bins of one band) aim at this many bytes.
BAND_BYTES = 0.4e9
CALIBRATION_KEYS = tuple(well_lib.CALIBRATION_STATISTICS)


def row_bands(row0: int, row1: int, rows: int) -> Iterator[tuple[int, int]]:
    """(band0, band1) bands of at most `rows` rows covering [row0, row1), top to bottom."""
    rows = max(1, int(rows))
    for band0 in range(row0, row1, rows):
        yield band0, min(row1, band0 + rows)


def band_rows(width: int, bytes_per_pixel: float, budget: float = BAND_BYTES, multiple: int = 1,
              minimum: int = 1) -> int:
    """The rows of a band of `width` columns whose arrays (`bytes_per_pixel` each pixel) fit `budget`:
    a multiple of `multiple`, at least `minimum`."""
    rows = int(budget // max(1.0, width * bytes_per_pixel))
    rows = rows // multiple * multiple
    return max(minimum, multiple, rows)


def fit_rows(rows: int, minimum: int, peak: Callable[[int], dict[str, float]],
             adjust: Callable[[int], int] | None = None) -> tuple[int, dict[str, float]]:
    """`rows` lowered by quarters (each step passed through `adjust`, e.g. to balanced tiles), not below `minimum`,
    until `peak(rows)["total"]` (`expected_peak`'s parts) fits `isl.infer.well.TARGET_PEAK_BYTES`; returns the rows
    and their peak. The kinds whose bands span the window's width (read-out, U-Net regression) shrink them so."""
    expected = peak(rows)
    while expected["total"] > well_lib.TARGET_PEAK_BYTES and rows > minimum:
        rows = max(minimum, rows * 3 // 4)
        rows = adjust(rows) if adjust is not None else rows
        expected = peak(rows)
    return rows, expected


def truth_channels(well: Any, config: Any, channels: Sequence[str], region: geometry_lib.OutputRegion
                   ) -> tuple[str, ...]:
    """The chosen channels with truth in the well (a present channel is labelled everywhere: one pixel tells)."""
    row0, column0 = region.row_offset, region.column_offset
    _, masks = well_lib.truth_window(well, config, channels, (row0, row0 + 1, column0, column0 + 1))
    return tuple(channel for index, channel in enumerate(channels) if masks[0, 0, index])


class BandWriter:
    """Writes one well's statistic images, calibration TIFFs and target panel as bands of rows arrive.

    Args:
        well_dir: the well's output folder.
        well: the read well (lazily read or not).
        config: the model's config (its channel vocabulary reads the truth).
        channels: the written target channels (C).
        statistics: the written statistic names.
        region: where the output lies in the image.
        image_format, names: `isl predict`'s --format and --names.
        panels: draw `target_error_panel.png` (median, truth, error) when the well holds truth.
        with_maps: write the calibration TIFFs for the channels with truth (a distribution and
            --save_calibration).
        panel_bits: 16 or 8.

    Call `truth(band0, band1)` for a band's truth when needed, `write(band0, images, maps)` for every band
    top to bottom, then `commit()`; `abort()` removes what was written.
    """

    def __init__(self, well_dir: str, well: Any, config: Any, channels: Sequence[str], statistics: Sequence[str],
                 region: geometry_lib.OutputRegion, image_format: str, names: str, panels: bool, with_maps: bool,
                 panel_bits: int = 16) -> None:
        self.well_dir, self.well, self.config, self.region = well_dir, well, config, region
        self.channels, self.statistics, self.panel_bits = tuple(channels), tuple(statistics), panel_bits
        present = truth_channels(well, config, channels, region) if panels or with_maps else ()
        self.with_panel = bool(panels and present)
        self.with_maps = bool(with_maps and present)
        # What prediction.json lists as the channels with truth (none when neither panel nor maps look at it).
        self.truth_channels = list(present) if (self.with_panel or self.with_maps) else []
        extension = ".png" if image_format == "png" else ".tif"
        self.files: dict[str, dict[str, str]] = {}
        self.calibration_files: dict[str, dict[str, str]] = {}
        self._writers: list[tuple[Any, str, int, str]] = []  # (writer, name, channel index, "statistic"/"map")
        self._rows = 0
        os.makedirs(well_dir, exist_ok=True)
        try:
            for index, channel in enumerate(self.channels):
                self.files[channel] = {}
                for name in self.statistics:
                    file_name = well_lib.output_name(well.metadata, channel, name, extension, names)
                    self._writers.append((images.row_writer(os.path.join(well_dir, file_name), region.height,
                                                            region.width, np.uint16), name, index, "statistic"))
                    self.files[channel][name] = file_name
            if self.with_maps:
                for index, channel in enumerate(self.channels):
                    if channel not in present:
                        continue
                    self.calibration_files[channel] = {}
                    for key, statistic in well_lib.CALIBRATION_STATISTICS.items():
                        file_name = well_lib.output_name(well.metadata, channel, statistic, ".tif", names)
                        self._writers.append((images.row_writer(os.path.join(well_dir, file_name), region.height,
                                                                region.width, np.float32), key, index, "map"))
                        self.calibration_files[channel][key] = file_name
        except BaseException:
            self.abort()
            raise
        self._panel_indices = [self.channels.index(channel) for channel in present]
        self._panel = (panels_lib.StreamingPanel(region.height, region.width, list(present), simplified=True)
                       if self.with_panel else None)

    def truth(self, band0: int, band1: int) -> tuple[np.ndarray, np.ndarray]:
        """(values float32, masks bool) `[band1 - band0, width, C]` of image rows [band0, band1) in the region."""
        column0 = self.region.column_offset
        return well_lib.truth_window(self.well, self.config, self.channels,
                                     (band0, band1, column0, column0 + self.region.width))

    def write(self, band0: int, statistics: dict[str, np.ndarray], maps: dict[str, np.ndarray] | None = None,
              truth: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Writes image rows [band0, band0 + n) (the next rows of the region).

        Args:
            statistics: name -> `[n, width, C]` in [0, 1] (every written statistic, and "median" for the panel).
            maps: `CALIBRATION_KEYS` -> `[n, width, C]` float32 (NaN where the truth is missing), with maps.
            truth: this band's `truth(...)` when the caller read it already.
        """
        count = next(iter(statistics.values())).shape[0]
        if band0 != self.region.row_offset + self._rows:
            raise ValueError(f"BandWriter: rows from {band0} arrive after {self._rows} rows of the region.")
        if self.with_panel and truth is None:
            truth = self.truth(band0, band0 + count)
        try:
            for writer, name, index, kind in self._writers:
                if kind == "statistic":
                    band = np.round(np.clip(np.nan_to_num(statistics[name][..., index]), 0, 1) * 65535)
                    writer.write_rows(band.astype(np.uint16))
                else:
                    writer.write_rows(np.asarray(maps[name][..., index], np.float32))
        except BaseException:
            self.abort()
            raise
        if self.with_panel:
            values, masks = truth
            for row, index in enumerate(self._panel_indices):
                self._panel.add(row, self._rows, {"median": statistics["median"][..., index]}, values[..., index],
                                masks[..., index].astype(np.float32))
        self._rows += count

    def commit(self) -> dict[str, str]:
        """Puts every file in place; returns the panels written ({"target": file name} or {})."""
        try:
            for writer, *_ in self._writers:
                writer.commit()
            if not self.with_panel:
                return {}
            path = panels_lib.write_panel(os.path.join(self.well_dir, well_lib.TARGET_PANEL), self._panel.result(),
                                          self.panel_bits)
            return {"target": os.path.basename(path)}
        except OSError as error:
            raise images._write_error(self.well_dir, error) from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Removes the temporary files of every writer not yet committed."""
        for writer, *_ in self._writers:
            writer.abort()


def panel_bytes(width: int, with_panel: bool) -> float:
    """The streamed target panel's memory (the downscaled result plus one band of panel rows)."""
    if not with_panel:
        return 0.0
    return panels_lib.MAX_PANEL_PIXELS * 3 * 4.0 + panels_lib.StreamingPanel.BAND_ROWS * 3 * (width + 8) * 3 * 4 * 3


def expected_peak(network: float, band: float, well: Any, width: int, with_panel: bool) -> dict[str, float]:
    """The modelled peak memory by part (bytes): runtime (TensorFlow and the model), network (one pass's
    activations and what the kind keeps of it), well (the decoded well held in memory; 0 when read lazily),
    rows (one band's arrays and the streamed panel); "total" sums them."""
    from isl.data import wells as wells_lib
    from isl.infer import predict as predict_lib

    parts = {"runtime": predict_lib.RUNTIME_BYTES, "network": float(network),
             "well": float(wells_lib.held_bytes(well)), "rows": float(band) + panel_bytes(width, with_panel)}
    parts["total"] = sum(parts.values())
    return parts


def check_memory(expected: dict[str, float], what: str, advice: str, available_bytes: float | None = None) -> str:
    """One line with the expected peak ("Expected peak memory: ..."); raises InputError (exit 2) with `advice`
    (the flag to change) when it does not fit the free memory.

    Args:
        what: how the network part is run ("U-Net tiles of 512 px", ...).
        available_bytes: free memory (None: psutil's available memory now).
    """
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    line = (f"Expected peak memory: {expected['total'] / 1e9:.1f} GB ({what}: {expected['network'] / 1e9:.1f} GB; "
            f"well {expected['well'] / 1e9:.1f} GB; rows and panels {expected['rows'] / 1e9:.1f} GB); "
            f"{available_bytes / 1e9:.1f} GB free.")
    if expected["total"] > available_bytes:
        raise errors.InputError(f"{line[:-1]}: it would not fit; {advice}, or free memory.")
    return line
