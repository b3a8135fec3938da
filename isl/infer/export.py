"""SavedModel export: serving signatures with the preprocessing inside the graph.

`export_model(model_dir, export_dir)` writes a TensorFlow SavedModel that a
lab can run behind TF Serving, or load with `tf.saved_model.load` in a
process that never imports `isl`:

    EXPORT_DIR/
      saved_model.pb, variables/, fingerprint.pb   the SavedModel
      model.keras     the native Keras archive (for fine-tuning; needs isl)
      config.json     the model's ExperimentConfig
      export.json     signatures, outputs, valid sizes, z mapping (this doc)

Signatures (every spatial size is dynamic):

* `serving_default`: `z_stack` `[batch, height, width, num_source_z]`
  uint16 -- the raw transmitted-light z-stack as the microscope writes it.
  Scaled by 1/65535 (isl_reference.md §3.4).
* `serving_float32`: the same, `z_stack` float32 already in [0, 1].
* `logits`: `network_input` `[batch, height, width, 2 * num_z_values]`
  float32 (value/mask interleaved, §1.1) -> `logits` `[batch, h, w,
  num_heads, num_classes]`; what `isl predict --saved_model` tiles with.
* `predict_image`: `z_stack` `[batch, height, width, num_source_z]` uint16
  of ANY height and width -> `<CHANNEL>_<statistic>` `[batch, height,
  width]`: the whole image, reflection-padded, tiled and stitched inside
  the graph with the exact plan of `isl predict` (`isl.infer.image_graph`),
  equal to `isl predict --border=reflect --tile_size=<the export's>`.

Inside the z-stack signatures: the z mapping of training (network z value f
reads source slice `round((num_source_z - 1) * f)`, half to even, §3.3; any
`num_source_z` from 1 to `MAX_SOURCE_Z`), presence masks of ones, the
network, the softmax and the statistics (§2). Height and width must be
`input_size + phase * k` (250 + 16k for the paper model); the output is
`height - 2 * border` (8 + 16k) per side. Outputs, one per target channel
(`channels.output_target_channels`, e.g. `DAPI_CONFOCAL`):

* `<CHANNEL>_<statistic>`: `[batch, h, w]` float32 in [0, 1], for each
  requested statistic (median, mean, std by default; mode, p_nonzero,
  entropy on request);
* `<CHANNEL>_distribution`: `[batch, h, w, num_classes]` float32
  probabilities, with `with_distributions`.

The z-stack inputs are declared rank 4, `[batch, height, width,
num_source_z]`; a wrong size or z count fails with an InvalidArgumentError
whose message says what is valid. By default only the target channels whose
heads were trained (`trained_channels.json`, as `isl predict` reads it) are
exported; `all_heads` exports every target head.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any


from isl import config as config_lib
from isl import errors
from isl.data import assemble
from isl.infer import image_graph
from isl.infer import predict as predict_lib
from isl.infer import tiling
from isl.io import atomic
from isl.io import calibration_file
from isl.io import model_dir as model_dir_lib
from isl.model import geometry as geometry_lib
from isl.model import saving
from isl.model import statistic_names
from isl.model import statistics as statistics_lib

SERVING_DEFAULT = "serving_default"
SERVING_FLOAT32 = "serving_float32"
LOGITS_SIGNATURE = "logits"
PREDICT_IMAGE = "predict_image"
# The endpoint bioimage.io tools call (keras.layers.TFSMLayer's default).
BIOIMAGEIO_ENDPOINT = "serve"
BIOIMAGEIO_OUTPUT = "prediction"
SIGNATURES = (SERVING_DEFAULT, SERVING_FLOAT32, LOGITS_SIGNATURE, PREDICT_IMAGE)
# The automatic predict_image tile side is planned for this much memory.
IMAGE_TILE_BUDGET_BYTES = 2e9
DEFAULT_STATISTICS = ("median", "mean", "std")
# Source stacks up to this many z slices are mapped inside the graph.
MAX_SOURCE_Z = 256
KERAS_ARCHIVE = "model.keras"
EXPORT_INFO_FILE = "export.json"
UINT16_MAX = 65535.0
# [batch, height, width, num_source_z]
STACK_SHAPE = [None, None, None, None]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote."""

    export_dir: str
    keras_path: str | None
    signatures: tuple[str, ...]
    outputs: tuple[str, ...]
    input_size: int
    phase: int
    border: int
    channels: tuple[str, ...] = ()
    tile_size: int | None = None


def output_name(channel: str, statistic: str) -> str:
    """Signature output key of a channel's statistic, e.g. DAPI_CONFOCAL_median."""
    return f"{channel}_{statistic}"


def bioimageio_id(name: str) -> str:
    """The bioimage.io tensor id of an output name: lower case (spec 0.5 ids)."""
    return name.lower()


def _check_name(channel: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", channel):
        raise errors.InputError(f"Channel name {channel!r} cannot name a signature output.")


class ServingFunctions:
    """The graph of the z-stack signatures, built around a Keras model.

    Args:
        model: the network, `[batch, H, W, 2Z]` -> logits
            `[batch, h, w, heads, classes]`, built with dynamic spatial size.
        config: its ExperimentConfig.
        statistics: names from `isl.model.statistics.STATISTICS`.
        with_distributions: also return each target channel's probabilities.
        channels: the target channels to serve (default: all of the model's).
        tile_size: the largest run input side of `predict_image` (a valid
            size, `input_size + phase * k`); None: one run per phase class.
        calibration: the model directory's `isl.io.calibration_file.Calibration`
            or None: each target head's logits are divided by its temperature in
            every signature (the `logits` one included).
    """

    def __init__(
        self,
        model: Any,
        config: config_lib.ExperimentConfig,
        statistics: Sequence[str] = DEFAULT_STATISTICS,
        with_distributions: bool = False,
        channels: Sequence[str] | None = None,
        tile_size: int | None = None,
        calibration: Any = None,
    ) -> None:
        import tensorflow as tf

        self.model = model
        self.config = config
        self.statistics = tuple(statistics)
        self.with_distributions = with_distributions
        self.geometry = geometry_lib.geometry(config.model)
        channels_arg, channels = channels, config.channels
        self.num_z_values = channels.num_z_values
        available = channels.output_target_channels
        self.target_channels = tuple(available) if channels_arg is None else tuple(channels_arg)
        for channel in self.target_channels:
            _check_name(channel)
            if channel not in available:
                raise errors.InputError(
                    f"The model does not predict {channel}; its target channels are {', '.join(available)}.")
        self.target_head_indices = tuple(channels.num_input_heads + available.index(c) for c in self.target_channels)
        self.tile_size = tile_size
        self.temperatures = None
        self._inverse_temperatures = None
        if calibration is not None and calibration.route == "heads":
            self.temperatures = tuple(calibration.temperature(channel) for channel in self.target_channels)
            every_head = [1.0] * channels.num_input_heads + [calibration.temperature(channel) for channel in available]
            self._inverse_temperatures = predict_lib.inverse_temperatures_of(every_head)  # [heads, 1]
        self._image_functions: dict[str, Any] = {}
        # One traced graph each, shared by the signatures that call them: the
        # network is traced once however many signatures there are.
        self.logits_function = tf.function(
            self.logits,
            input_signature=[tf.TensorSpec([None, None, None, channels.num_input_features], tf.float32,
                                           name="network_input")],
        )
        self.outputs_function = tf.function(
            self.outputs, input_signature=[tf.TensorSpec(STACK_SHAPE, tf.float32, name="z_stack")]
        )
        # Row n: the source slice of each z value for an n-slice stack, from the
        # one owner of the rule (the same table the training pipeline gathers).
        self._z_table = tf.constant(assemble.z_index_table(MAX_SOURCE_Z, self.num_z_values), tf.int32)

    @property
    def output_names(self) -> tuple[str, ...]:
        names = [output_name(c, s) for c in self.target_channels for s in self.statistics]
        if self.with_distributions:
            names += [output_name(c, "distribution") for c in self.target_channels]
        return tuple(names)

    def check_stack(self, z_stack: Any, base: int | None = None, phase: int | None = None) -> Any:
        """Asserts a valid `[batch, H, W, n]` size (`base + phase k`, default the network's); returns `z_stack`."""
        import tensorflow as tf

        base = self.geometry.input_size if base is None else base
        phase = self.geometry.phase if phase is None else phase
        rank = tf.rank(z_stack)
        rank_ok = tf.debugging.Assert(
            tf.equal(rank, 4),
            ["isl: z_stack must have rank 4, [batch, height, width, num_source_z]; got rank", rank],
            name="check_rank",
        )
        with tf.control_dependencies([rank_ok]):
            z_stack = tf.ensure_shape(tf.identity(z_stack), [None, None, None, None], name="z_stack_rank_4")
        shape = tf.shape(z_stack)
        height, width, num_source_z = shape[1], shape[2], shape[3]

        def valid_side(side: Any) -> Any:
            return tf.logical_and(side >= base, tf.math.floormod(side - base, phase) == 0)

        size_ok = tf.debugging.Assert(
            tf.logical_and(valid_side(height), valid_side(width)),
            [
                f"isl: z_stack height and width must be {base} + {phase}k (k >= 0), e.g. "
                f"{base}, {base + phase}, {base + 2 * phase}; got height, width:",
                height,
                width,
            ],
            name="check_size",
        )
        z_ok = tf.debugging.Assert(
            tf.logical_and(num_source_z >= 1, num_source_z <= MAX_SOURCE_Z),
            [f"isl: z_stack must have 1 to {MAX_SOURCE_Z} z slices on its last axis; got:", num_source_z],
            name="check_z",
        )
        with tf.control_dependencies([size_ok, z_ok]):
            return tf.identity(z_stack)

    def network_input(self, z_stack: Any) -> Any:
        """`[batch, H, W, n]` float32 in [0,1] -> `[batch, H, W, 2Z]` (§1.1, §3.3)."""
        import tensorflow as tf

        num_source_z = tf.shape(z_stack)[3]
        indices = tf.gather(self._z_table, num_source_z)
        values = tf.gather(z_stack, indices, axis=3)
        interleaved = tf.stack([values, tf.ones_like(values)], axis=-1)
        shape = tf.shape(values)
        return tf.reshape(interleaved, tf.concat([shape[:3], [2 * self.num_z_values]], axis=0))

    def logits(self, network_input: Any) -> dict[str, Any]:
        # isl calibrate's temperatures, when the model has them.
        return {"logits": predict_lib.tempered(self.model(network_input, training=False), self._inverse_temperatures)}

    def outputs(self, z_stack: Any) -> dict[str, Any]:
        """`[batch, H, W, n]` float32 in [0, 1] -> the signature outputs."""
        import tensorflow as tf

        z_stack = self.check_stack(z_stack)
        logits = self.logits_function(self.network_input(z_stack))["logits"]
        target_logits = tf.gather(logits, list(self.target_head_indices), axis=3)
        probabilities = tf.nn.softmax(target_logits, axis=-1)
        results: dict[str, Any] = {}
        computed = statistics_lib.distribution_statistics(probabilities, self.statistics) if self.statistics else {}
        for index, channel in enumerate(self.target_channels):
            for statistic in self.statistics:
                results[output_name(channel, statistic)] = tf.cast(computed[statistic][..., index], tf.float32)
            if self.with_distributions:
                results[output_name(channel, "distribution")] = probabilities[..., index, :]
        return results

    def serve_uint16(self, z_stack: Any) -> dict[str, Any]:
        import tensorflow as tf

        return self.outputs_function(tf.cast(z_stack, tf.float32) / UINT16_MAX)

    def check_z(self, z_stack: Any) -> Any:
        """Asserts 1 to `MAX_SOURCE_Z` slices on the last axis; returns `z_stack`."""
        import tensorflow as tf

        num_source_z = tf.shape(z_stack)[3]
        z_ok = tf.debugging.Assert(
            tf.logical_and(num_source_z >= 1, num_source_z <= MAX_SOURCE_Z),
            [f"isl: z_stack must have 1 to {MAX_SOURCE_Z} z slices on its last axis; got:", num_source_z],
            name="check_z",
        )
        with tf.control_dependencies([z_ok]):
            return tf.identity(z_stack)

    def image_outputs(self, z_stack: Any, border_mode: str = "reflect") -> dict[str, Any]:
        """`[batch, H, W, n]` float32 in [0, 1] -> `<CHANNEL>_<statistic>` stitched images.

        "reflect": `[batch, H, W]`, any H and W (`isl predict`'s default);
        "valid": `[batch, H - 2 border, W - 2 border]` for valid sizes.
        """
        import tensorflow as tf

        if border_mode not in self._image_functions:
            network = predict_lib.Network.from_keras(self.model, self.target_head_indices)
            run_function = predict_lib.make_run_function(network, self.statistics, temperatures=self.temperatures)
            self._image_functions[border_mode] = image_graph.whole_image_function(
                run_function, self.network_input, self.geometry, self.statistics,
                len(self.target_channels), self.tile_size, border_mode)
        function = self._image_functions[border_mode]
        z_stack = self.check_z(z_stack)
        spec = {name: tf.TensorSpec([None, None, len(self.target_channels)], tf.float32) for name in self.statistics}
        images = tf.map_fn(function, z_stack, fn_output_signature=spec, parallel_iterations=1)
        return {output_name(channel, statistic): images[statistic][..., index]
                for index, channel in enumerate(self.target_channels) for statistic in self.statistics}

    def predict_image(self, z_stack: Any) -> dict[str, Any]:
        """The `predict_image` signature: uint16 `[batch, H, W, n]`, any H and W."""
        import tensorflow as tf

        return self.image_outputs(tf.cast(z_stack, tf.float32) / UINT16_MAX, "reflect")

    def bioimageio_outputs(self, z_stack: Any) -> dict[str, Any]:
        """The bioimage.io endpoint: float32 `[batch, H, W, n]` in [0, 1], H and W valid.

        Returns one tensor, `prediction` `[batch, H - 2 border, W - 2 border,
        channels * statistics]` (channel-major, `image_output_names`),
        computed with the exact plan. One tensor because bioimageio.core's
        TF2 adapter matches a SavedModel's outputs by the restored dict's
        order, which is random per process.
        """
        import tensorflow as tf

        z_stack = self.check_stack(z_stack)
        outputs = self.image_outputs(z_stack, "valid")
        return {BIOIMAGEIO_OUTPUT: tf.stack([outputs[name] for name in self.image_output_names()], axis=-1)}

    def image_output_names(self) -> tuple[str, ...]:
        """`<CHANNEL>_<statistic>`, channel-major: the order of the bioimage.io channel axis."""
        return tuple(output_name(c, s) for c in self.target_channels for s in self.statistics)


def parse_statistics(names: Sequence[str]) -> tuple[str, ...]:
    """The paper's statistic names an export serves (`isl.model.statistic_names.parse_statistic_names`;
    no quantiles: the serving graph computes the six distribution statistics).

    Raises:
        InputError: for an unknown name or a quantile.
    """
    return statistic_names.parse_statistic_names(names, quantiles=False)[0]


def export_channels(
    config: config_lib.ExperimentConfig,
    trained: Sequence[str] | None,
    all_heads: bool = False,
    source: str = "the model",
) -> tuple[str, ...]:
    """The target channels to export, by the rule of `isl predict`.

    All of the model's target channels with `all_heads` or when `trained`
    (from `trained_channels.json`) is None; else those it lists.

    Raises:
        InputError: when `trained` lists none of the model's target channels
            (the heads never saw a label).
    """
    available = tuple(config.channels.output_target_channels)
    if all_heads or trained is None:
        return available
    chosen = tuple(channel for channel in available if channel in trained)
    if not chosen:
        raise errors.InputError(
            f"{source}: no trained target heads (trained_channels.json lists {list(trained)}; the model's target "
            f"channels are {', '.join(available)}); nothing worth exporting. Pass --all_heads to export them anyway."
        )
    return chosen


def image_tile_size(config: config_lib.ExperimentConfig, num_heads: int, tile_size: int | None) -> int:
    """The `predict_image` run input side: `tile_size` made valid, or one for `IMAGE_TILE_BUDGET_BYTES`."""
    geometry = geometry_lib.geometry(config.model)
    if tile_size:
        return tiling.valid_tile_size(geometry, tile_size, image_graph.GRAPH_PLAN)
    return predict_lib.auto_tile_size(geometry, config.model, num_heads, IMAGE_TILE_BUDGET_BYTES)


def load_exportable(model_dir: str) -> tuple[Any, config_lib.ExperimentConfig, tuple[str, ...] | None]:
    """(model, config, trained channels) of a model directory with 256-bin heads.

    Whether the folder's kind can be served so is its kind's to say
    (`isl.infer.kinds.registry.check_savedmodel`, which `isl export` asks first).

    Raises:
        InputError: for a missing directory.
    """
    if not os.path.isdir(model_dir):
        raise errors.InputError(f"{model_dir}: model directory not found.")
    trained = saving.read_trained_channels(model_dir)
    model, config = saving.load_model_dir(model_dir)
    return model, config, trained


def export_model(
    model_dir: str,
    export_dir: str,
    statistics: Sequence[str] = DEFAULT_STATISTICS,
    with_distributions: bool = False,
    keras_archive: bool = True,
    all_heads: bool = False,
    tile_size: int | None = None,
) -> ExportResult:
    """Exports the model of `model_dir` (config.json + weights) to `export_dir`.

    The directory is written under a temporary name and renamed at the end;
    an existing `export_dir` is replaced.

    Args:
        all_heads: export every target head, not only the trained ones.
        tile_size: `predict_image`'s largest run input side (None: automatic).

    Raises:
        InputError: when `model_dir` holds no model or no trained target
            head, or for a bad statistic.
    """
    statistics = parse_statistics(statistics)
    if not statistics and not with_distributions:
        raise errors.InputError("Nothing to export: give --statistics or --with_distributions.")

    model, config, trained = load_exportable(model_dir)
    channels = export_channels(config, trained, all_heads, model_dir)
    return export_keras_model(model, config, export_dir, statistics, with_distributions, keras_archive,
                              trained_channels=trained, channels=channels, tile_size=tile_size,
                              calibration=calibration_file.read_fresh(model_dir))


def export_keras_model(
    model: Any,
    config: config_lib.ExperimentConfig,
    export_dir: str,
    statistics: Sequence[str] = DEFAULT_STATISTICS,
    with_distributions: bool = False,
    keras_archive: bool = True,
    trained_channels: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    tile_size: int | None = None,
    bioimageio_endpoint: bool = False,
    calibration: Any = None,
) -> ExportResult:
    """Exports a built Keras model (dynamic spatial size); see `export_model`.

    `trained_channels` (from the model directory's `trained_channels.json`)
    is written beside the SavedModel, so `isl predict --saved_model` defaults
    to the trained heads too. `channels`: the target channels the z-stack
    signatures return (default all). `bioimageio_endpoint` adds the
    `serve` endpoint of a bioimage.io package (`bioimageio_outputs`).
    `calibration` (`isl.io.calibration_file`, from `isl calibrate`) is applied
    inside every signature and written beside the SavedModel.
    """
    import keras
    import tensorflow as tf

    channels = export_channels(config, None) if channels is None else tuple(channels)
    tile_size = image_tile_size(config, len(channels), tile_size)
    functions = ServingFunctions(model, config, statistics, with_distributions, channels, tile_size, calibration)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_DEFAULT,
        functions.serve_uint16,
        input_signature=[tf.TensorSpec(STACK_SHAPE, tf.uint16, name="z_stack")],
    )
    archive.add_endpoint(SERVING_FLOAT32, functions.outputs_function)
    archive.add_endpoint(LOGITS_SIGNATURE, functions.logits_function)
    signatures = SIGNATURES
    if functions.statistics:
        archive.add_endpoint(PREDICT_IMAGE, functions.predict_image,
                             input_signature=[tf.TensorSpec(STACK_SHAPE, tf.uint16, name="z_stack")])
    else:
        signatures = tuple(name for name in SIGNATURES if name != PREDICT_IMAGE)
    if bioimageio_endpoint:
        archive.add_endpoint(BIOIMAGEIO_ENDPOINT, functions.bioimageio_outputs,
                             input_signature=[tf.TensorSpec(STACK_SHAPE, tf.float32, name="z_stack")])
    geometry = functions.geometry
    image_outputs = [output_name(c, s) for c in functions.target_channels for s in functions.statistics]
    info = {
        "format": "isl SavedModel export",
        "signatures": {
            SERVING_DEFAULT: {
                "input": {"z_stack": "[batch, height, width, num_source_z] uint16 (scaled by 1/65535)"},
                "outputs": list(functions.output_names),
            },
            SERVING_FLOAT32: {
                "input": {"z_stack": "[batch, height, width, num_source_z] float32 in [0, 1]"},
                "outputs": list(functions.output_names),
            },
            LOGITS_SIGNATURE: {
                "input": {"network_input": f"[batch, height, width, {config.channels.num_input_features}] float32"},
                "outputs": ["logits"],
            },
        },
        "valid_sizes": f"height, width = {geometry.input_size} + {geometry.phase}k (k >= 0)",
        "input_size": geometry.input_size,
        "phase": geometry.phase,
        "border": geometry.border,
        "output_size": f"side - {2 * geometry.border}",
        "num_z_values": config.channels.num_z_values,
        "z_values": list(config.channels.z_values),
        "z_mapping": "network z value f reads source slice round((num_source_z - 1) * f), half to even",
        "max_source_z": MAX_SOURCE_Z,
        "target_channels": list(functions.target_channels),
        "head_names": list(config.channels.head_names),
        "statistics": list(functions.statistics),
        "with_distributions": with_distributions,
        "num_classes": config.model.num_classes,
        "image_tile_size": tile_size,
    }
    if PREDICT_IMAGE in signatures:
        info["signatures"][PREDICT_IMAGE] = {
            "input": {"z_stack": "[batch, height, width, num_source_z] uint16, any height and width"},
            "outputs": image_outputs,
            "plan": f"isl predict --border=reflect --tile_size={tile_size}",
        }
    export_dir = os.path.abspath(export_dir)
    with atomic.output_directory(export_dir) as temporary:
        archive.write_out(temporary, verbose=False)
        keras_path = None
        if keras_archive:
            keras_path = os.path.join(export_dir, KERAS_ARCHIVE)
            model.save(os.path.join(temporary, KERAS_ARCHIVE))
        layout = model_dir_lib.ModelDir(temporary)  # An export carries config.json and trained_channels.json too.
        config_lib.save_config(config, layout.config)
        if trained_channels is not None:
            atomic.write_text(layout.trained_channels,
                              json.dumps({"target_channels": list(trained_channels)}, indent=2) + "\n")
        atomic.write_text(os.path.join(temporary, EXPORT_INFO_FILE), json.dumps(info, indent=2) + "\n")
        if calibration is not None:  # Applied inside the graph; isl predict --saved_model reads the marginal.

            calibration_file.write(temporary, calibration)
    return ExportResult(
        export_dir=export_dir,
        keras_path=keras_path,
        signatures=signatures,
        outputs=functions.output_names,
        input_size=geometry.input_size,
        phase=geometry.phase,
        border=geometry.border,
        channels=functions.target_channels,
        tile_size=tile_size,
    )
