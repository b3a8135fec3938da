"""Predict whole wells and write the lab-named images, panels and calibration.

`Predictor` is a loaded model folder (`isl.infer.kinds.registry.load_predictor`
opens a model directory or an exported SavedModel and sets its kind);
`predict_heads_well` reads one well, predicts the chosen target heads with
`isl.infer.predict`, and writes into `OUTPUT_DIR/<well name>/` (the other
kinds reuse its writers: `write_statistics`, `write_target_panel`, ...):

* one image per target channel and statistic, in the lab's naming with
  `kind-PREDICTED` and `statistic-MEDIAN` etc. (16-bit PNG, value * 65535;
  `image_format="tiff"` for 16-bit TIFF);
* when the well holds ground truth for a predicted channel:
  `target_error_panel.png` and `input_error_panel.png` (§5.2-§5.3; the
  input panel compares the 26 autoencoding heads with the z-mapped input),
  and three float32 TIFFs per channel for calibration,
  `statistic-TRUE_BIN_PROBABILITY`, `statistic-CDF_BELOW_TRUE` and
  `statistic-CRPS` (`isl.eval.calibration`);
* `prediction.json`: what was predicted, from what, where the output lies in
  the image (`region`), every file written, and the model's calibration
  (`calibration`: applied or not, the temperatures or spread scales, and the
  marginal histogram the information gain needs; None for an uncalibrated
  model). `isl evaluate` reads it.

A model directory with `calibration.json` (`isl calibrate`) is predicted
calibrated: each target head's logits are divided by its temperature before
the softmax (`isl.infer.predict.make_run_function`), or a read-out's spread is
multiplied by its scale. `apply_calibration=False` predicts as trained.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl import progress as progress_lib
from isl.data import assemble
from isl.data import convert
from isl.data import wells as wells_lib
from isl.eval import panels as panels_lib
from isl.infer import graph as graph_lib
from isl.infer import predict as predict_lib
from isl.io import atomic
from isl.io import filenames
from isl.io import images
from isl.io import prediction_file
from isl.model import geometry as geometry_lib
from isl.model import statistic_names

PREDICTION_FILE = prediction_file.PREDICTION_FILE
TARGET_PANEL = "target_error_panel.png"
INPUT_PANEL = "input_error_panel.png"
IMAGE_FORMATS = ("png", "tiff")
CALIBRATION_STATISTICS = {"true_bin_probability": "TRUE_BIN_PROBABILITY", "cdf_below_true": "CDF_BELOW_TRUE",
                          "crps": "CRPS"}
PRECISIONS = ("", "float32", "bfloat16")


@dataclasses.dataclass
class Predictor:
    """A loaded network and what is needed to run it.

    Attributes:
        config: the model's ExperimentConfig.
        geometry: its patch geometry (border, phase, output size).
        source: the model directory or SavedModel path.
        model: a Keras model (model directory), or None.
        signature: the SavedModel `logits` function, or None.
        trained_channels: the target channels whose heads saw labels in
            training (`trained_channels.json`), or None when unknown.
        inference_graph: run model directories through
            `isl.infer.graph.inference_model` (batch norm folded into the
            activation; same outputs up to float rounding).
        readout: the model directory's ridge read-out (`readout.json`, from
            `isl readout`), or None; when set, `predict_well` writes the
            read-out's predictions instead of the heads'.
        calibration: the model's `calibration.json` (`isl.io.calibration_file`), or None.
        apply_calibration: apply it (temperatures / spread scales) when predicting.
        calibration_in_graph: the temperatures are already inside the
            SavedModel's logits (`isl export` of a calibrated model), so they
            are not applied again.
        kind: the folder's model kind (`isl.infer.kinds.base.ModelKind`), which
            every command asks what to do with it (`isl.infer.kinds.registry`).
    """

    config: config_lib.ExperimentConfig
    geometry: geometry_lib.Geometry
    source: str
    model: Any = None
    signature: Any = None
    trained_channels: tuple[str, ...] | None = None
    inference_graph: bool = True
    readout: Any = None
    readout_embedder: Any = None
    calibration: Any = None
    apply_calibration: bool = True
    calibration_in_graph: bool = False
    trained_precision: str = ""
    kind: Any = None
    _run_functions: dict = dataclasses.field(default_factory=dict)
    _inference_model: Any = None

    @property
    def compute_dtype(self) -> str:
        """"bfloat16" or "float32" (model directories; SavedModels count as float32)."""
        return "bfloat16" if self.model is not None and self.config.train.mixed_precision == "bfloat16" else "float32"

    def run_function(
        self,
        head_indices: tuple[int, ...],
        statistics: tuple[str, ...],
        quantiles: tuple[float, ...],
        with_truth: bool,
        temperatures: tuple[float, ...] | None = None,
        calibration_heads: int | None = None,
        head_chunk_rows: int | None = None,
    ):
        """A cached `make_run_function` for these heads (one trace per set)."""
        key = (head_indices, statistics, quantiles, with_truth, temperatures, calibration_heads, head_chunk_rows)
        if key not in self._run_functions:
            if self.model is not None:
                model = self.model
                if self.inference_graph:
                    if self._inference_model is None:
                        self._inference_model = graph_lib.inference_model(self.model)
                    model = self._inference_model
                network = predict_lib.Network.from_keras(model, head_indices)
            else:
                signature = self.signature
                network = predict_lib.Network.from_logits(
                    lambda inputs: signature(network_input=inputs)["logits"], head_indices
                )
            self._run_functions[key] = predict_lib.make_run_function(
                network, statistics, quantiles, with_truth=with_truth, temperatures=temperatures,
                calibration_heads=calibration_heads, head_chunk_rows=head_chunk_rows,
            )
        return self._run_functions[key]

    @property
    def applied_calibration(self) -> Any:
        """The calibration to apply now (applied and not already in the graph), or None."""
        if self.calibration is None or not self.apply_calibration or self.calibration_in_graph:
            return None
        return self.calibration

    def head_temperatures(self, head_indices: Sequence[int]) -> tuple[float, ...] | None:
        """Per head, its calibrated temperature (target heads) or 1; None when nothing is applied."""
        calibration = self.applied_calibration
        if calibration is None or calibration.route != "heads":
            return None
        channels = self.config.channels
        targets = channels.output_target_channels
        values = []
        for index in head_indices:
            position = index - channels.num_input_heads
            values.append(calibration.temperature(targets[position]) if 0 <= position < len(targets) else 1.0)
        return tuple(values)

    def calibration_record(self) -> dict[str, Any] | None:
        """What `prediction.json` records of the calibration (None: the model has none)."""
        if self.calibration is None:
            return None
        return {
            "applied": bool(self.apply_calibration or self.calibration_in_graph),
            "route": self.calibration.route,
            "channels": self.calibration.channels,
            "marginal": self.calibration.marginal,
            "marginal_source": self.calibration.marginal_source,
        }


def native_bfloat16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (`amx_bf16` or `avx512_bf16` among its flags).

    Without it, TensorFlow emulates bfloat16 and a bfloat16 run is slower
    than float32 (measured in BUILD_NOTES, issue 25).
    """
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[-1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        return False
    return False


def default_precision(trained_precision: str, native: bool | None = None) -> str:
    """What precision '' (as trained) resolves to for a model trained in `trained_precision`
    (`train.mixed_precision`): "" (as trained) unless it is bfloat16 and the CPU has no native bfloat16
    (`native_bfloat16`), then "float32" (faster there)."""
    if trained_precision != "bfloat16":
        return ""
    if native is None:
        native = native_bfloat16()
    return "" if native else "float32"


def choose_channels(
    config: config_lib.ExperimentConfig,
    requested: Sequence[str] | None,
    trained: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """The target channels to predict: the requested ones, or by default all the
    model has, less those known to be untrained (`trained` lists the trained ones).

    Raises:
        InputError: for a channel the model does not predict.
    """
    available = config.channels.output_target_channels
    if not requested:
        if trained is not None and any(channel in trained for channel in available):
            return tuple(channel for channel in available if channel in trained)
        return tuple(available)
    unknown = [channel for channel in requested if channel not in available]
    if unknown:
        raise errors.InputError(
            f"The model does not predict {', '.join(unknown)}; its target channels are {', '.join(available)}."
        )
    return tuple(requested)


NAME_STYLES = ("lab", "short")


def output_name(metadata: dict[str, Any], channel: str, statistic: str, extension: str, names: str = "lab") -> str:
    """The file name of a predicted image.

    `names="lab"` (default): the lab's grammar (`lab-...,kind-PREDICTED,statistic-MEDIAN...`, about 150
    characters), which the paper's tools read; `names="short"`: `<CHANNEL>_<STATISTIC>.ext`, e.g.
    `DAPI_CONFOCAL_MEDIAN.png` (prediction.json maps channels and statistics to files either way).
    """
    if names == "short":
        return f"{channel}_{statistic.upper()}{extension}"
    if names != "lab":
        raise errors.InputError(f"Unknown --names {names!r}; use {' or '.join(NAME_STYLES)}.")

    key = filenames.ImageKey(
        lab=metadata.get("lab", ""),
        condition=metadata.get("condition", ""),
        well=metadata.get("well", ""),
        date=metadata.get("date", ""),
        z=filenames.MAXPROJECT,
        channel=channel,
        kind=filenames.KIND_PREDICTED,
        statistic=statistic.upper(),
    )
    return filenames.format_name(key, nested=False, extension=extension)


def _write_statistic(path: str, image: np.ndarray) -> None:
    images.write_image(path, np.round(np.clip(np.nan_to_num(image), 0, 1) * 65535).astype(np.uint16))


def _write_float_tiff(path: str, image: np.ndarray) -> None:
    import tifffile

    with atomic.temporary_path(path) as temporary:
        tifffile.imwrite(temporary, np.asarray(image, np.float32))


STAGING_PREFIX = ".tmp-predict-"


def check_output_options(image_format: str, names: str) -> None:
    """Raises InputError for an unknown image format or file-name style (every model kind writes both)."""
    if image_format not in IMAGE_FORMATS:
        raise errors.InputError(f"Unknown --format {image_format!r}; use png or tiff.")
    if names not in NAME_STYLES:
        raise errors.InputError(f"Unknown --names {names!r}; use {' or '.join(NAME_STYLES)}.")


@dataclasses.dataclass
class WellPlan:
    """What to predict for one well, and where its truth is.

    No whole-image array: the truth is read band by band from the well
    (`truth_window`, `network_window`), so memory does not grow with the image.

    Attributes:
        well: the read well (`isl.data.wells.Well`).
        config: the model's ExperimentConfig.
        channels: the target channels to predict and write.
        written: the statistic names written per channel (the paper's, then quantiles "qNN").
        computed: the paper's statistics the run computes (`written` plus the panels').
        quantiles: the quantiles the run computes, in (0, 1).
        head_indices: the heads run: the chosen targets, then the input heads when there are panels.
        truth_channels: the chosen channels with labels in this well.
        with_panels: write the error panels (`panels` asked and truth present).
        with_truth: the run also returns the calibration maps of the target heads.
        panel_statistics: the statistics the panels show.
        plan_name: `isl.infer.tiling.PLANS` name.
        window: (row0, row1, column0, column1) in image pixels, or None.
    """

    well: Any
    config: config_lib.ExperimentConfig
    channels: tuple[str, ...]
    written: tuple[str, ...]
    computed: tuple[str, ...]
    quantiles: tuple[float, ...]
    head_indices: tuple[int, ...]
    truth_channels: tuple[str, ...]
    with_panels: bool
    with_truth: bool
    panel_statistics: tuple[str, ...]
    plan_name: str
    window: tuple[int, int, int, int] | None

    def truth_window(self, row0: int, row1: int, column0: int, column1: int) -> tuple[np.ndarray, np.ndarray]:
        """(values float32, masks bool) `[rows, columns, len(channels)]` of the chosen targets in a window."""
        return truth_window(self.well, self.config, self.channels, (row0, row1, column0, column1))

    def network_window(self, row0: int, row1: int, column0: int, column1: int) -> tuple[np.ndarray, tuple[int, ...]]:
        """The input heads' truth in a window: (the source planes `[num_source_z, rows, columns]` float32, the
        source plane of each input head). Head z's truth is `planes[sources[z]]`, the value channel of
        `assemble.network_input` at z; its masks and interleaved copy (`[rows, columns, 2 * num_z_values]`, 4x
        the planes at 13 z and 26 z values: 0.5 GB for 256 rows of a 4096-px-wide well) are never made."""
        planes = np.asarray(self.well.inputs[:, row0:row1, column0:column1], dtype=np.float32)
        return planes, assemble.z_slice_indices(planes.shape[0], self.config.channels.num_z_values)


def truth_window(
    well: Any, config: config_lib.ExperimentConfig, channels: Sequence[str], window: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """`assemble.target_stack` of the chosen channels, computed inside a window only.

    Returns:
        (values float32, masks bool), each `[row1 - row0, column1 - column0, len(channels)]`.
    """
    row0, row1, column0, column1 = window
    cropped = {name: image[row0:row1, column0:column1] for name, image in well.targets.items()}
    values, masks = assemble.target_stack(cropped, config.channels, shape=(row1 - row0, column1 - column0))
    columns = [config.channels.output_target_channels.index(channel) for channel in channels]
    return values[..., columns], masks[..., columns] > 0


def plan_well(
    config: config_lib.ExperimentConfig,
    well: Any,
    chosen: Sequence[str],
    statistics: Sequence[str],
    panels: bool,
    simplified_panels: bool,
    save_calibration: bool,
    plan_name: str,
    window: tuple[tuple[int, int], tuple[int, int]] | None,
) -> WellPlan:
    """Which heads and statistics to run for a well, and with what truth (`WellPlan`)."""
    known, quantiles = statistic_names.parse_statistic_names(statistics)
    channel_config = config.channels
    all_targets = channel_config.output_target_channels
    # A present channel is labelled everywhere (its mask is all ones), so one pixel tells which have truth.
    _, corner_masks = truth_window(well, config, chosen, (0, 1, 0, 1))
    truth_channels = tuple(channel for index, channel in enumerate(chosen) if corner_masks[0, 0, index])
    has_truth = bool(truth_channels)
    with_panels = panels and has_truth
    head_indices = [channel_config.num_input_heads + all_targets.index(channel) for channel in chosen]
    panel_statistics = panels_lib.SIMPLIFIED_STATISTICS if simplified_panels else panels_lib.FULL_STATISTICS
    computed = list(known)
    if with_panels:
        head_indices += list(range(channel_config.num_input_heads))
        computed += [name for name in panel_statistics if name not in computed]
    return WellPlan(
        well=well,
        config=config,
        channels=tuple(chosen),
        written=tuple(known) + tuple(statistic_names.quantile_name(q) for q in quantiles),
        computed=tuple(computed),
        quantiles=tuple(quantiles),
        head_indices=tuple(head_indices),
        truth_channels=truth_channels,
        with_panels=with_panels,
        with_truth=has_truth and save_calibration,
        panel_statistics=tuple(panel_statistics),
        plan_name=plan_name,
        window=_pixel_window(well, window),
    )


def _pixel_window(
    well: Any, window: tuple[tuple[int, int], tuple[int, int]] | None
) -> tuple[int, int, int, int] | None:
    """A `--region` window with its open ends resolved: (row0, row1, column0, column1), or None."""
    if window is None:
        return None
    return convert.well_window(well, window)


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """The geometry of one well's run: the computed and the written region, the tile plan and its side."""

    region: geometry_lib.OutputRegion
    wanted: geometry_lib.OutputRegion
    plan: Any
    tile_size: int


# The peak memory the automatic tile size aims at (the tiles get what the rest leaves, at least
# `MIN_TILE_BUDGET_BYTES`), and never more than a quarter of the available memory for the tiles.
TARGET_PEAK_BYTES = 3e9
# Tiles below this share waste most of their work on the 121-px border each side (a 346-px tile computes 11x
# its output): past it, a large well goes over the target instead of slowing down many times.
MIN_TILE_BUDGET_BYTES = 1.0e9


def chunks_heads(predictor: Predictor) -> bool:
    """Whether the run computes the heads in row chunks (a model directory; a SavedModel gives whole logits)."""
    return predictor.model is not None


def layout_well(
    predictor: Predictor, plan: WellPlan, border_mode: str, tile_size: int | None, memory_budget_bytes: float | None
) -> RunLayout:
    """The tile side (given, or the largest whose modelled peak stays within `TARGET_PEAK_BYTES`, with the tiles'
    share at most a quarter of the available memory; `memory_budget_bytes` fixes that share) and the tile plan."""
    if tile_size is not None or memory_budget_bytes is not None:
        return _layout(predictor, plan, border_mode, tile_size, memory_budget_bytes)
    import psutil

    budget = min(psutil.virtual_memory().available / 4,
                 TARGET_PEAK_BYTES - expected_peak_bytes(predictor, plan, None)["total"])
    layout = _layout(predictor, plan, border_mode, None, max(MIN_TILE_BUDGET_BYTES, budget))
    for _ in range(4):  # The stitched rows grow with the tile: shrink the tiles by the excess.
        excess = expected_peak_bytes(predictor, plan, layout)["total"] - TARGET_PEAK_BYTES
        if excess <= 0 or budget <= MIN_TILE_BUDGET_BYTES:
            break
        budget -= excess
        layout = _layout(predictor, plan, border_mode, None, max(MIN_TILE_BUDGET_BYTES, budget))
    return layout


def _layout(predictor: Predictor, plan: WellPlan, border_mode: str, tile_size: int | None,
            memory_budget_bytes: float | None) -> RunLayout:
    geometry = predictor.geometry
    if tile_size is None:
        per_input, per_output = predict_lib.memory_per_pixel(
            predictor.config.model, len(plan.head_indices), predictor.config.model.num_classes,
            predictor.compute_dtype, chunks_heads(predictor))
        tile_size = predict_lib.tiling.auto_tile_size(geometry, memory_budget_bytes, per_input, per_output,
                                                      plan.plan_name)
    region, wanted, tiles = predict_lib.plan_image(tuple(plan.well.inputs.shape[1:]), geometry, border_mode,
                                                   tile_size, plan.plan_name, plan.window)
    return RunLayout(region, wanted, tiles, tiles.rows.run_input_length)


def expected_peak_bytes(predictor: Predictor, plan: WellPlan, layout: RunLayout | None) -> dict[str, float]:
    """The modelled peak memory of predicting a well, by part (bytes); "total" sums them.

    runtime (TensorFlow and the model), tiles (one run's activations,
    `predict.memory_per_pixel`, and one heads chunk), well (the decoded well:
    its input stack and targets), rows (the stitched bands of about two row
    runs of every result, plus the panel bands) and panels (the two
    downscaled panels). Without a layout: everything but the tiles and rows.
    """
    num_heads, num_classes = len(plan.head_indices), predictor.config.model.num_classes
    per_input, per_output = predict_lib.memory_per_pixel(
        predictor.config.model, num_heads, num_classes, predictor.compute_dtype, chunks_heads(predictor))
    tiles = band = 0.0
    width = plan.well.inputs.shape[2]
    if layout is not None:
        rows, columns = layout.plan.run_input_shape
        out_rows, out_columns = layout.plan.run_output_shape
        tiles = rows * columns * per_input + out_rows * out_columns * per_output
        values = num_heads * (len(plan.computed) + len(plan.quantiles))
        values += 3 * len(plan.channels) if plan.with_truth else 0
        # About two row runs of every result in float32 (the stitcher's band while it grows).
        band = 2 * out_rows * layout.plan.columns.grid_length * values * 4.0
        width = layout.wanted.width
    if chunks_heads(predictor):
        tiles += predict_lib.head_chunk_bytes(num_heads, num_classes)
    from isl.data import wells as wells_lib

    well = float(wells_lib.held_bytes(plan.well))  # 0 for a lazily read well (its planes are in a file).
    panel_columns = 3 if len(plan.panel_statistics) == 1 else 12
    panel_band = (panels_lib.StreamingPanel.BAND_ROWS * panel_columns * (width + 8) * 3 * 4 * 3
                  if plan.with_panels else 0.0)
    panels = 2 * panels_lib.MAX_PANEL_PIXELS * 3 * 4.0 if plan.with_panels else 0.0
    parts = {"runtime": predict_lib.RUNTIME_BYTES, "tiles": tiles, "well": well, "rows": band + panel_band,
             "panels": panels}
    parts["total"] = sum(parts.values())
    return parts


def check_memory(expected: dict[str, float], layout: RunLayout, available_bytes: float | None = None) -> str:
    """One line with the expected peak; raises InputError (exit 2) naming the flag to change when it does not fit.

    Args:
        available_bytes: free memory (None: psutil's available memory now).
    """
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    line = (f"Expected peak memory: {expected['total'] / 1e9:.1f} GB (tiles of {layout.tile_size} px: "
            f"{expected['tiles'] / 1e9:.1f} GB; well {expected['well'] / 1e9:.1f} GB; rows and panels "
            f"{(expected['rows'] + expected['panels']) / 1e9:.1f} GB); {available_bytes / 1e9:.1f} GB free.")
    if expected["total"] > available_bytes:
        biggest = max(("tiles", "rows"), key=lambda part: expected[part])
        advice = (f"lower --tile_size (now {layout.tile_size})" if biggest == "tiles" else
                  "ask for fewer --statistics or --nopanels, or lower --tile_size")
        raise errors.InputError(f"{line[:-1]}: it would not fit; {advice}, or free memory.")
    return line


def run_well(
    predictor: Predictor,
    plan: WellPlan,
    layout: RunLayout,
    batch_size: int,
    progress_enabled: bool,
    on_rows: Any,
) -> tuple[dict[str, Any], float]:
    """Runs the network over the well as planned, handing bands of rows to `on_rows` (`predict.stream_image`).

    Returns:
        (the plan figures of `predict.Prediction.info`, the seconds it took).
    """
    well = plan.well
    truth_heads = len(plan.channels) if plan.with_truth else None
    chunk_rows = None
    if chunks_heads(predictor):
        kept_columns = len(predict_lib.keep_indices(layout.plan.columns, layout.plan.geometry))
        chunk_rows = predict_lib.head_chunk_rows(kept_columns)
    run_function = predictor.run_function(plan.head_indices, plan.computed, plan.quantiles, plan.with_truth,
                                          predictor.head_temperatures(plan.head_indices), truth_heads, chunk_rows)
    progress = progress_lib.Progress(layout.plan.num_runs, label=f"predict {well.name}", enabled=progress_enabled,
                        exclude_first=True)
    truth_fn = (lambda row0, row1, column0, column1: plan.truth_window(row0, row1, column0, column1)[0]
                ) if plan.with_truth else None
    start = time.perf_counter()
    predict_lib.stream_image(
        layout.plan, layout.region, layout.wanted, well.inputs,
        predict_lib._default_network_input(predictor.config.channels.num_z_values), run_function, on_rows,
        truth_fn, batch_size, progress)
    progress.close()
    seconds = time.perf_counter() - start
    return predict_lib._plan_info(layout.plan, plan.plan_name, seconds), seconds


class WellWriter:
    """Writes one well's outputs as bands of rows arrive (`predict.stream_image`'s `on_rows`).

    Every statistic image and calibration TIFF is written incrementally
    (`isl.io.images.row_writer`), the panels are downscaled as they are drawn
    (`isl.eval.panels.StreamingPanel`): nothing of the well's size is kept.
    `commit` renames the files into place and writes the panels; `abort`
    removes what was written.
    """

    def __init__(self, well_dir: str, plan: WellPlan, wanted: geometry_lib.OutputRegion, image_format: str,
                 names: str, simplified_panels: bool, panel_bits: int) -> None:
        self.well_dir, self.plan, self.wanted, self.panel_bits = well_dir, plan, wanted, panel_bits
        metadata = plan.well.metadata
        extension = ".png" if image_format == "png" else ".tif"
        self.files: dict[str, dict[str, str]] = {}
        self.calibration_files: dict[str, dict[str, str]] = {}
        self._writers: list[tuple[Any, str, int, Any]] = []  # (writer, result name, head, kind)
        try:
            for index, channel in enumerate(plan.channels):
                self.files[channel] = {}
                for name in plan.written:
                    file_name = output_name(metadata, channel, name, extension, names)
                    writer = images.row_writer(os.path.join(well_dir, file_name), wanted.height, wanted.width,
                                               np.uint16)
                    self._writers.append((writer, name, index, "statistic"))
                    self.files[channel][name] = file_name
            if plan.with_truth:
                for index, channel in enumerate(plan.channels):
                    if channel not in plan.truth_channels:
                        continue
                    self.calibration_files[channel] = {}
                    for key, statistic in CALIBRATION_STATISTICS.items():
                        file_name = output_name(metadata, channel, statistic, ".tif", names)
                        writer = images.row_writer(os.path.join(well_dir, file_name), wanted.height, wanted.width,
                                                   np.float32)
                        self._writers.append((writer, key, index, "calibration"))
                        self.calibration_files[channel][key] = file_name
        except BaseException:
            self.abort()
            raise
        self._target_panel = self._input_panel = None
        if plan.with_panels:
            num_z = len(plan.head_indices) - len(plan.channels)
            self._target_panel = panels_lib.StreamingPanel(wanted.height, wanted.width, plan.truth_channels,
                                                           simplified_panels)
            self._input_panel = panels_lib.StreamingPanel(
                wanted.height, wanted.width, [f"z {index + 1}/{num_z}" for index in range(num_z)], simplified_panels)

    def __call__(self, row0: int, results: dict[str, np.ndarray]) -> None:
        """Writes `[rows, width, heads]` results for rows `[row0, row0 + rows)` of the wanted region."""
        count = next(iter(results.values())).shape[0]
        window = (self.wanted.row_offset + row0, self.wanted.row_offset + row0 + count, self.wanted.column_offset,
                  self.wanted.column_offset + self.wanted.width)
        values = masks = None
        if self.plan.with_truth or self.plan.with_panels:
            values, masks = self.plan.truth_window(*window)
        try:
            for writer, name, index, kind in self._writers:
                band = results[name][..., index]
                if kind == "statistic":
                    band = np.round(np.clip(np.nan_to_num(band), 0, 1) * 65535).astype(np.uint16)
                else:
                    band = np.where(masks[..., index], band, np.float32(np.nan)).astype(np.float32)
                writer.write_rows(band)
        except BaseException:
            self.abort()
            raise
        if self.plan.with_panels:
            for row, channel in enumerate(self.plan.truth_channels):
                index = self.plan.channels.index(channel)
                self._target_panel.add(row, row0, {name: results[name][..., index] for name in
                                                   self.plan.panel_statistics}, values[..., index], masks[..., index])
            planes, sources = self.plan.network_window(*window)
            first = len(self.plan.channels)
            for z, source in enumerate(sources):
                self._input_panel.add(z, row0, {name: results[name][..., first + z] for name in
                                                self.plan.panel_statistics}, planes[source])

    def commit(self) -> dict[str, str]:
        """Puts every file in place; returns the panels written ("target"/"input" -> file name)."""
        try:
            for writer, *_ in self._writers:
                writer.commit()
            if not self.plan.with_panels:
                return {}
            written = {}
            for key, panel, file_name in (("target", self._target_panel, TARGET_PANEL),
                                          ("input", self._input_panel, INPUT_PANEL)):
                path = panels_lib.write_panel(os.path.join(self.well_dir, file_name), panel.result(), self.panel_bits)
                written[key] = os.path.basename(path)
            return written
        except OSError as error:
            raise images._write_error(self.well_dir, error) from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Removes the temporary files of every writer not yet committed."""
        for writer, *_ in self._writers:
            writer.abort()


def predict_heads_well(
    predictor: Predictor,
    input_dir: str,
    output_dir: str,
    statistics: Sequence[str] = ("median",),
    channels: Sequence[str] | None = None,
    border_mode: str = "reflect",
    tile_size: int | None = None,
    image_format: str = "png",
    panels: bool = True,
    simplified_panels: bool = True,
    save_calibration: bool = True,
    batch_size: int = 1,
    panel_bits: int = 16,
    memory_budget_bytes: float | None = None,
    available_bytes: float | None = None,
    progress_enabled: bool = True,
    phases: int = 0,
    window: tuple[tuple[int, int], tuple[int, int]] | None = None,
    names: str = "lab",
) -> dict[str, Any]:
    """Predicts one well and writes its files into `output_dir/<well name>/`.

    Four steps: read the well, plan (channels, heads, truth), run the
    network over the image, write the images, panels and `prediction.json`.

    Args:
        predictor: from `isl.infer.kinds.registry.load_predictor` (the heads).
        input_dir: the folder of one well.
        output_dir: parent folder of the per-well output folders.
        statistics: names from `isl.model.statistics.STATISTICS` or "qNN".
        channels: target channels to predict (default: all of the model's).
        border_mode: "reflect" (default), "valid" or "original".
        tile_size: run input side; None chooses it from available RAM.
        image_format: "png" or "tiff" (16-bit either way).
        panels: write the error panels when the well holds ground truth.
        simplified_panels: 3-column panels (the original's default) or 12.
        panel_bits: 16 (the original's 16-bit RGB PNGs) or 8 (8-bit, at most
            `isl.eval.panels.MAX_MAIL_PIXELS` pixels: small enough to mail).
        save_calibration: write the calibration TIFFs when there is truth.
        batch_size: runs per network call.
        memory_budget_bytes: for the automatic tile size.
        available_bytes: the free memory the expected peak must fit
            (`check_memory`; None: psutil's available memory).
        progress_enabled: show a progress line on stderr.
        phases: 0 (exact: the model's own patch-wise reference in the fewest
            runs) or 1 (one run per tile; approximate for 8-px models).
        window: optional ((row0, row1), (column0, column1)) in image pixels
            (`isl.data.convert.parse_region`, -1 = the image edge): predict
            only this window, reading context from the well around it.
        names: output file names, "lab" (the paper's grammar) or "short"
            (`<CHANNEL>_<STATISTIC>.png`), for every model kind.

    Returns:
        The contents of `prediction.json` (paths relative to the well folder)
        plus `well_dir`.
    """
    chosen = choose_channels(predictor.config, channels, predictor.trained_channels)
    if phases not in (0, 1):
        raise errors.InputError(f"--phases must be 0 (exact) or 1 (one run per tile). Received: {phases}")
    well = wells_lib.read_checked_well(predictor.config, input_dir, lazy=True)  # Read by windows, never held whole.
    plan = plan_well(predictor.config, well, chosen, statistics, panels, simplified_panels, save_calibration,
                     "one" if phases == 1 else "exact", window)
    layout = layout_well(predictor, plan, border_mode, tile_size, memory_budget_bytes)
    print(check_memory(expected_peak_bytes(predictor, plan, layout), layout, available_bytes), flush=True)
    well_dir = os.path.join(output_dir, _safe_name(well.name))
    os.makedirs(well_dir, exist_ok=True)
    writer = WellWriter(well_dir, plan, layout.wanted, image_format, names, simplified_panels, panel_bits)
    try:
        info, seconds = run_well(predictor, plan, layout, batch_size, progress_enabled, writer)
    except BaseException:
        writer.abort()
        raise
    panel_files = writer.commit()
    summary = prediction_summary(
        predictor, well, input_dir, plan.channels, plan.written, border_mode, layout.wanted, image_format,
        writer.files, predictor.geometry,
        truth_channels=list(plan.truth_channels),
        calibration_files=writer.calibration_files,
        panels=panel_files,
        tile_size=list(info["tile_size"]),
        num_runs=info["num_runs"],
        plan=info["plan"],
        exact=info["exact"],
        seconds=round(seconds, 3),
    )
    prediction_file.write_summary(well_dir, summary)
    summary["well_dir"] = well_dir
    return summary


def write_statistics(
    well_dir: str,
    metadata: dict[str, Any],
    channels: Sequence[str],
    statistics: Sequence[str],
    images: dict[str, np.ndarray],
    image_format: str,
    names: str = "lab",
) -> dict[str, dict[str, str]]:
    """One 16-bit image per channel and statistic, named by `output_name` (`names`: lab or short).

    Args:
        images: statistic -> `[height, width, len(channels)]` in [0, 1].

    Returns:
        channel -> statistic -> file name.
    """
    extension = ".png" if image_format == "png" else ".tif"
    files: dict[str, dict[str, str]] = {}
    for index, channel in enumerate(channels):
        files[channel] = {}
        for name in statistics:
            file_name = output_name(metadata, channel, name, extension, names)
            _write_statistic(os.path.join(well_dir, file_name), images[name][..., index])
            files[channel][name] = file_name
    return files


def write_calibration_maps(
    well_dir: str,
    metadata: dict[str, Any],
    channels: Sequence[str],
    truth_channels: Sequence[str],
    maps: dict[str, np.ndarray],
    names: str = "lab",
) -> dict[str, dict[str, str]]:
    """One float32 TIFF per `CALIBRATION_STATISTICS` key and channel with truth (`names`: `output_name`'s style).

    Args:
        maps: key -> `[height, width, len(channels)]` (NaN where the truth is missing).

    Returns:
        channel -> key -> file name.
    """
    files: dict[str, dict[str, str]] = {}
    for index, channel in enumerate(channels):
        if channel not in truth_channels:
            continue
        files[channel] = {}
        for key, statistic in CALIBRATION_STATISTICS.items():
            file_name = output_name(metadata, channel, statistic, ".tif", names)
            _write_float_tiff(os.path.join(well_dir, file_name), maps[key][..., index])
            files[channel][key] = file_name
    return files


def prediction_summary(
    predictor: Predictor,
    well: Any,
    input_dir: str,
    channels: Sequence[str],
    statistics: Sequence[str],
    border_mode: str,
    region: geometry_lib.OutputRegion,
    image_format: str,
    files: dict[str, dict[str, str]],
    geometry: geometry_lib.PatchSizes | None,
    **details: Any,
) -> dict[str, Any]:
    """The contents of `prediction.json` (`isl.io.prediction_file`) for a predicted well.

    Args:
        geometry: the model's patch geometry, recorded so `isl evaluate`
            can place the interior and original regions; None for a model
            without a border (the regression U-Net).
        details: further keys (plan figures, panels, calibration files, timing).
    """
    height, width = well.inputs.shape[1:]
    summary = {
        "well": well.name,
        "input_dir": os.path.abspath(input_dir),
        "metadata": {key: well.metadata.get(key, "") for key in ("lab", "condition", "well", "date")},
        "model": os.path.abspath(predictor.source),
        "model_name": predictor.config.name,
        "architecture": predictor.config.model.architecture,
        "channel_config": dataclasses.asdict(predictor.config.channels),
        "channels": list(channels),
        "statistics": list(statistics),
        "border": border_mode,
        "region": dataclasses.asdict(region),
        "geometry": None if geometry is None else dataclasses.asdict(geometry_lib.PatchGeometry.of(geometry)),
        "image_shape": [int(height), int(width)],
        "num_source_z": int(well.inputs.shape[0]),
        "format": image_format,
        "files": files,
        "truth_channels": [],
        "calibration_files": {},
        "panels": {},
        "ignored_files": list(well.metadata.get("ignored_files", [])),
        "calibration": predictor.calibration_record(),
        "normalization": predictor.config.data.normalization,
        "channel_map": list(predictor.config.data.channel_map),
        "modality": well.metadata.get("modality", ""),
        "warnings": list(well.metadata.get("warnings", [])),
    }
    summary.update(details)
    return summary


def _safe_name(name: str) -> str:
    return "".join(character if character.isalnum() or character in "-_." else "_" for character in name) or "well"


def write_target_panel(
    well_dir: str,
    well: Any,
    config: config_lib.ExperimentConfig,
    channels: Sequence[str],
    median: np.ndarray,
    region: geometry_lib.OutputRegion,
    bits: int = 16,
) -> tuple[list[str], dict[str, str]]:
    """The simplified target error panel (median, truth, median - truth) of a model without 256-bin heads.

    For the read-out and the U-Net regression, which predict no input heads
    (so no input panel) and no mode (so only the simplified panel).

    Args:
        median: `[region.height, region.width, len(channels)]` in [0, 1].

    Returns:
        (the channels with truth, {"target": file name} or {} without truth).
    """
    values, known = assemble.target_window(well.targets, config.channels, tuple(well.inputs.shape[1:]), channels,
                                           region.bounds)
    masks = known.astype(np.float32)
    with_truth = [index for index in range(len(channels)) if masks[..., index].any()]
    if not with_truth:
        return [], {}
    names = [channels[index] for index in with_truth]
    # Band by band into the downscaled panel (as the heads' panels): no full-resolution RGB grid of the image.
    panel = panels_lib.StreamingPanel(region.height, region.width, names, simplified=True)
    for row, index in enumerate(with_truth):
        panel.add(row, 0, {"median": median[..., index]}, values[..., index], masks[..., index])
    path = panels_lib.write_panel(os.path.join(well_dir, TARGET_PANEL), panel.result(), bits)
    return names, {"target": os.path.basename(path)}
