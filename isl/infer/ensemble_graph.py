"""An ensemble folder (`ensemble.json`) as one TensorFlow graph: `isl export` of an ensemble, both formats.

`isl predict` of an ensemble predicts each member on the window and combines
them in NumPy (`isl.infer.ensemble`). Here every member's kind gives the same
computation as TF ops (`ModelKind.member_graph`), and `EnsembleGraph`
combines them with the fitted weights held as constants:

* each member: `z_stack` float32 `[batch, H, W, n]` in [0, 1] -> its point
  value `[batch, H, W, C]` in [0, 1] and, when the ensemble mixes
  distributions, its 256-bin probabilities `[batch, H, W, C, 256]`. Each member
  reads the whole input with its own context, reflected at the image's edges
  (the heads: reflection-padded by their border, the exact plan as one dense
  run for one shift class or stitched runs for several; the read-out: its
  Embedder tiles and ridge maps;
  the U-Net regression: one reflect-padded pass), so the input is the
  `isl predict` window and the members' different halos never meet;
* values: `clip(intercept + sum_m w_m (v_m - mu_m) / sigma_m, 0, 1)`;
* mixture: `sum_m w_m p_m`, and the statistics of the mixed bins as
  `isl.infer.ensemble.bin_statistic_images` computes them (median: the first
  bin whose cumulative probability reaches 0.5; mean, std).

"both" (the shipped ensemble) serves the median and the mean from the values
and the std from the mixture, as `isl predict` writes them; "values" serves
the median and the mean; "mixture" all three from the mixture. Quantiles are
not served (the exports serve the paper's named statistics). The output
equals `isl predict` of a well whose image is the input (float32 members;
`isl predict` runs each member as trained, e.g. bfloat16 heads on a CPU with
native bfloat16). Sides `64 + 16k`, as the same-size packages; the output has
the input's size.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import errors
from isl.infer import bioimageio_graph
from isl.infer import ensemble as ensemble_lib
from isl.infer import export as export_lib
from isl.infer import graph as graph_lib
from isl.infer import image_graph
from isl.infer import predict as predict_lib
from isl.infer import tiling
from isl.io import atomic

NUM_CLASSES = ensemble_lib.NUM_CLASSES
SIZE_MIN, SIZE_STEP = bioimageio_graph.SAME_SIZE_MIN, bioimageio_graph.SAME_SIZE_STEP
EXPORT_FORMAT = "isl ensemble SavedModel export"


@dataclasses.dataclass
class MemberGraph:
    """One member as TF ops.

    Attributes:
        run: `z_stack` float32 `[batch, H, W, n]` -> (values `[batch, H, W, C]` in [0, 1], probabilities
            `[batch, H, W, C, 256]` or None), C the requested channels in their order.
        tracked: the Keras model(s) whose variables `run` reads.
    """

    run: Callable[[Any], tuple[Any, Any]]
    tracked: Any


# ----------------------------------------------------------------------------------------------------------------
# Each kind's member graph (`ModelKind.member_graph` calls these).


def heads_member(predictor: Any, channels: Sequence[str], with_distribution: bool) -> MemberGraph:
    """The 256-bin heads as `isl.infer.ensemble.heads_window` computes them (reflect border, exact plan): their
    mean and their (tempered) softmax.

    One shift class (the shipped 24-px checkpoint, the tiny preset): one dense run of the reflection-padded input is
    the exact plan. Several (the paper's 8-px models): the exact plan's runs, one per shift class, stitched inside the
    graph (`isl.infer.image_graph.whole_image_function`, the bins flattened into its channel axis).
    """
    import tensorflow as tf

    from isl.model import statistics as statistics_lib

    config, geometry = predictor.config, predictor.geometry
    model = graph_lib.inference_model(predictor.model)
    targets = config.channels.output_target_channels
    heads = tuple(config.channels.num_input_heads + targets.index(channel) for channel in channels)
    temperatures = predictor.head_temperatures(heads)
    inverse_temperatures = predict_lib.inverse_temperatures_of(temperatures)
    network = predict_lib.Network.from_keras(model, heads)
    functions = export_lib.ServingFunctions(model, config, (), channels=None)
    border, size, phase = geometry.border, geometry.input_size, geometry.phase
    count = len(channels)

    def padded_side(side: Any) -> Any:
        # The smallest valid run input covering the side and its border on each end.
        return size + phase * ((tf.maximum(side + 2 * border - size, 0) + phase - 1) // phase)

    def dense(z_stack: Any) -> Any:
        shape = tf.shape(z_stack)
        height, width = shape[1], shape[2]
        rows = image_graph.reflect_indices(tf.range(padded_side(height)) - border, height)
        columns = image_graph.reflect_indices(tf.range(padded_side(width)) - border, width)
        inputs = functions.network_input(tf.gather(tf.gather(z_stack, rows, axis=1), columns, axis=2))
        logits = network(inputs, tf.range(height), tf.range(width))  # [batch, H, W, C, 256]
        return tf.nn.softmax(predict_lib.tempered(logits, inverse_temperatures), axis=-1)

    run_function = predict_lib.make_run_function(network, ("mean",), with_distributions=True,
                                                 temperatures=temperatures)
    flat_size = count * NUM_CLASSES

    def flat_run(inputs: Any, keep_rows: Any, keep_columns: Any) -> dict[str, Any]:
        bins = run_function(inputs, keep_rows, keep_columns)["distribution"]  # [1, rows, columns, C, 256]
        shape = tf.shape(bins)
        return {"distribution": tf.reshape(bins, [shape[0], shape[1], shape[2], flat_size])}

    one_image = image_graph.whole_image_function(flat_run, functions.network_input, geometry, ("distribution",),
                                                 flat_size, None, "reflect")

    def stitched(z_stack: Any) -> Any:
        images = tf.map_fn(lambda image: one_image(image)["distribution"], z_stack, parallel_iterations=1,
                           fn_output_signature=tf.TensorSpec([None, None, flat_size], tf.float32))
        shape = tf.shape(images)
        return tf.reshape(images, [shape[0], shape[1], shape[2], count, NUM_CLASSES])

    one_run = tiling.block_classes(geometry, "exact") == (0,)

    def run(z_stack: Any) -> tuple[Any, Any]:
        probabilities = (dense if one_run else stitched)(z_stack)
        mean = tf.cast(statistics_lib.distribution_statistics(probabilities, ("mean",))["mean"], tf.float32)
        return mean, (probabilities if with_distribution else None)

    return MemberGraph(run, model)


def readout_member(predictor: Any, channels: Sequence[str], with_distribution: bool) -> MemberGraph:
    """A ridge read-out as `isl.infer.ensemble.readout_window` computes it: its value clipped to [0, 1] and its
    calibrated distribution's bins."""
    import tensorflow as tf

    tensors, core = bioimageio_graph.readout_graph(predictor)
    targets = predictor.readout.targets
    columns = [targets.index(channel) for channel in channels]
    calibration = predictor.applied_calibration
    parameters = [{} if calibration is None else calibration.channels.get(channel, {}) for channel in channels]

    def run(z_stack: Any) -> tuple[Any, Any]:
        value, raw_spread, spread = (tf.gather(tensor, columns, axis=3) for tensor in tensors(z_stack))
        probabilities = None
        if with_distribution:
            probabilities = tf.stack([bioimageio_graph.bin_probabilities(
                parameters[index], value[..., index], raw_spread[..., index], spread[..., index])
                for index in range(len(channels))], axis=3)
        return tf.clip_by_value(value, 0.0, 1.0), probabilities

    return MemberGraph(run, core)


def regression_member(predictor: Any, channels: Sequence[str], with_distribution: bool) -> MemberGraph:
    """The U-Net regression as `isl.infer.ensemble.regression_window` computes it (one pass over the input; the
    banded `isl predict` tiles on the pooling grid give the same pixels): its value clipped to [0, 1] and, calibrated,
    its distribution's bins (one spread per channel)."""
    import tensorflow as tf

    raw_values = bioimageio_graph.regression_raw_graph(predictor, channels)
    parameters = []
    if with_distribution:
        bioimageio_graph.check_regression_distribution(predictor, channels)
        parameters = [predictor.applied_calibration.channels[channel] for channel in channels]

    def run(z_stack: Any) -> tuple[Any, Any]:
        raw = raw_values(z_stack)
        probabilities = None
        if with_distribution:
            parts = []
            for index, values in enumerate(parameters):
                raw_spread = tf.fill(tf.shape(raw[..., index]), tf.constant(float(values["spread"]), tf.float32))
                spread = raw_spread * float(values.get("spread_scale", 1.0))
                parts.append(bioimageio_graph.bin_probabilities(values, raw[..., index], raw_spread, spread))
            probabilities = tf.stack(parts, axis=3)
        return tf.clip_by_value(raw, 0.0, 1.0), probabilities

    return MemberGraph(run, predictor.model)


# ----------------------------------------------------------------------------------------------------------------
# The composed graph.


def served_statistics(combination: str) -> tuple[str, ...]:
    """What an export of an ensemble with this combination serves."""
    return ("median", "mean") if combination == "values" else ensemble_lib.STATISTICS


def choose_statistics(combination: str, statistics: Sequence[str] | None) -> tuple[str, ...]:
    """The requested statistics (None or empty: all it serves), checked.

    Raises:
        InputError: an unknown statistic or one this ensemble does not serve.
    """
    given = served_statistics(combination)
    if not statistics:
        return given
    chosen = export_lib.parse_statistics(statistics)
    unsupported = [name for name in chosen if name not in given]
    if unsupported:
        raise errors.InputError(f"--statistics={','.join(unsupported)}: an ensemble ({combination}) exports "
                                f"{', '.join(given)}.")
    return chosen


class EnsembleGraph:
    """The members' graphs and the fitted weights of a loaded ensemble (`isl.infer.ensemble.Ensemble`).

    Args:
        ensemble: loaded with float32 members (`registry.load_predictor(..., precision="float32")`).
        statistics: from `served_statistics`.
        with_distributions: also serve each channel's mixed bins (not for "values").
        channels: the target channels to serve, in this order (default: the ensemble's).

    Raises:
        InputError: a member whose kind has no graph form, or distributions asked of a "values" ensemble.
    """

    def __init__(self, ensemble: Any, statistics: Sequence[str], with_distributions: bool = False,
                 channels: Sequence[str] | None = None) -> None:
        self.ensemble = ensemble
        self.channels = tuple(channels) if channels else tuple(ensemble.channels)
        unknown = [channel for channel in self.channels if channel not in ensemble.channels]
        if unknown:
            raise errors.InputError(f"--channels: the ensemble does not predict {', '.join(unknown)}.")
        self.statistics = tuple(statistics)
        self.with_distributions = with_distributions
        combination = ensemble.combination
        if with_distributions and combination == "values":
            raise errors.InputError("--with_distributions: this ensemble combines values only "
                                    "(combination values); it has no distribution.")
        self.from_values = {name for name in self.statistics if name in ("median", "mean")} \
            if combination in ("values", "both") else set()
        self.mixed = with_distributions or any(name not in self.from_values for name in self.statistics)
        count = len(ensemble.members)
        value_weights = np.zeros((count, len(self.channels)))
        mixture_weights = np.zeros((count, len(self.channels)))
        for index, channel in enumerate(self.channels):
            weights = ensemble.weights[channel]
            if self.from_values:
                value_weights[:, index] = weights["values"]["weights"]
            if self.mixed:
                mixture_weights[:, index] = weights["mixture"]["weights"]
        self.value_weights, self.mixture_weights = value_weights, mixture_weights
        # Members with no weight for what is served are not run.
        self.used = [m for m in range(count) if value_weights[m].any() or mixture_weights[m].any()]
        self.members: dict[int, MemberGraph] = {}
        for m in self.used:
            predictor = ensemble.members[m].predictor
            try:
                self.members[m] = predictor.kind.member_graph(predictor, self.channels, bool(mixture_weights[m].any()))
            except errors.InputError as error:
                message = str(error)
                raise errors.InputError(message if message.startswith("member ") else
                                        f"member {ensemble.members[m].model_dir}: {message}") from None

    @property
    def tracked(self) -> list[Any]:
        return [member.tracked for member in self.members.values()]

    @property
    def output_names(self) -> tuple[str, ...]:
        names = [export_lib.output_name(c, s) for c in self.channels for s in self.statistics]
        if self.with_distributions:
            names += [export_lib.output_name(c, "distribution") for c in self.channels]
        return tuple(names)

    def check_stack(self, z_stack: Any) -> Any:
        """Asserts rank 4, sides `64 + 16k` and 1 to 256 z slices (the same-size kinds' rule)."""
        first = self.ensemble.members[0].predictor
        functions = export_lib.ServingFunctions(None, first.config, (), channels=())
        return functions.check_stack(z_stack, SIZE_MIN, SIZE_STEP)

    def images(self, z_stack: Any) -> tuple[dict[str, Any], Any]:
        """`[batch, H, W, n]` float32 in [0, 1] -> (statistic -> `[batch, H, W, C]`, mixed bins `[batch, H, W, C,
        256]` or None)."""
        import tensorflow as tf

        z_stack = self.check_stack(z_stack)
        combined, mixture = None, None
        for m in self.used:
            # One member at a time: TensorFlow's executor runs independent ops concurrently, so without this gate
            # every member's activations (about 1 GB each for a 506-px core tile) and bins are alive at once. A
            # member starts once the running sums hold the previous one's part (its bins are then freed).
            gate = [total for total in (combined, mixture) if total is not None]
            if gate:
                with tf.control_dependencies(gate):
                    member_input = tf.identity(z_stack, name="member_gate")
            else:
                member_input = z_stack
            values, probabilities = self.members[m].run(member_input)
            if self.from_values and self.value_weights[m].any():
                part = self.ensemble.weights
                scale = np.array([part[c]["values"]["weights"][m] / part[c]["values"]["stds"][m]
                                  if self.value_weights[m, i] else 0.0 for i, c in enumerate(self.channels)],
                                 np.float32)
                shift = np.array([part[c]["values"]["means"][m] for c in self.channels], np.float32)
                term = (values - shift) * scale
                combined = term if combined is None else combined + term
            if self.mixed and self.mixture_weights[m].any():
                weighted = probabilities * self.mixture_weights[m].astype(np.float32)[:, None]
                mixture = weighted if mixture is None else mixture + weighted
        images: dict[str, Any] = {}
        if self.from_values:
            intercept = np.array([self.ensemble.weights[c]["values"]["intercept"] for c in self.channels], np.float32)
            base = tf.zeros_like(z_stack[..., :1]) + intercept  # [batch, H, W, C]
            value = tf.clip_by_value(base if combined is None else base + combined, 0.0, 1.0)
            for name in self.from_values:
                images[name] = value
        wanted = [name for name in self.statistics if name not in images]
        if wanted:
            images.update(bin_statistics(mixture, wanted))
        return images, mixture

    def outputs(self, z_stack: Any) -> dict[str, Any]:
        """`[batch, H, W, n]` float32 in [0, 1] -> `<CHANNEL>_<statistic>` `[batch, H, W]` (and
        `<CHANNEL>_distribution` `[batch, H, W, 256]`)."""
        images, mixture = self.images(z_stack)
        results = {export_lib.output_name(channel, name): images[name][..., index]
                   for index, channel in enumerate(self.channels) for name in self.statistics}
        if self.with_distributions:
            for index, channel in enumerate(self.channels):
                results[export_lib.output_name(channel, "distribution")] = mixture[..., index, :]
        return results

    def prediction(self, z_stack: Any) -> dict[str, Any]:
        """The bioimage.io endpoint: {`prediction`: `[batch, H, W, C * statistics]`, channel-major}."""
        import tensorflow as tf

        outputs = self.outputs(z_stack)
        names = [export_lib.output_name(c, s) for c in self.channels for s in self.statistics]
        return {export_lib.BIOIMAGEIO_OUTPUT: tf.stack([outputs[name] for name in names], axis=-1)}


def bin_statistics(probabilities: Any, statistics: Sequence[str]) -> dict[str, Any]:
    """`isl.infer.ensemble.bin_statistic_images` in the graph: `[..., 256]` (need not sum to 1) -> name -> `[...]`
    (median: the first bin whose cumulative probability reaches 0.5, over 255; mean; std)."""
    import tensorflow as tf

    levels = tf.constant(np.arange(NUM_CLASSES, dtype=np.float32) / (NUM_CLASSES - 1))
    total = tf.reduce_sum(probabilities, axis=-1)
    mean = tf.reduce_sum(probabilities * levels, axis=-1) / total
    images = {}
    for name in statistics:
        if name == "mean":
            images[name] = mean
        elif name == "std":
            second = tf.reduce_sum(probabilities * levels * levels, axis=-1) / total
            images[name] = tf.sqrt(tf.maximum(second - mean * mean, 0.0))
        elif name == "median":
            cumulative = tf.cumsum(probabilities, axis=-1) / total[..., None]
            reached = tf.cast(cumulative >= 0.5 - 1e-9, tf.int32)
            images[name] = tf.cast(tf.argmax(reached, axis=-1), tf.float32) / (NUM_CLASSES - 1)
        else:
            raise errors.InputError(f"An ensemble's mixture gives median, mean and std, not {name}.")
    return images


# ----------------------------------------------------------------------------------------------------------------
# The two formats.


def package_model(predictor: Any, statistics: Sequence[str] | None) -> bioimageio_graph.PackageModel:
    """The bioimage.io graph of a loaded ensemble (float32 members): `prediction` `[batch, H, W, C * statistics]`,
    the input's size."""
    import tensorflow as tf

    ensemble = predictor.ensemble
    chosen = choose_statistics(ensemble.combination, statistics)
    if "median" not in chosen:
        raise errors.InputError("A bioimage.io package needs the median among --statistics (its primary output).")
    graph = EnsembleGraph(ensemble, chosen)
    serve = tf.function(graph.prediction, input_signature=[tf.TensorSpec(export_lib.STACK_SHAPE, tf.float32,
                                                                         name="z_stack")], autograph=False)
    return bioimageio_graph.PackageModel("ensemble", ensemble.config, graph.channels, chosen, SIZE_MIN, SIZE_STEP,
                                         0, serve, graph.tracked, ensemble=describe(ensemble))


def describe(ensemble: Any) -> dict[str, Any]:
    """What the exports record of the ensemble: its folder, combination and members (folder, kind)."""
    return {"source": ensemble.source, "combination": ensemble.combination,
            "members": [{"model_dir": member.model_dir, "kind": member.kind} for member in ensemble.members],
            "fitted_on": ensemble.record.get("fitted_on", {}), "validation": ensemble.record.get("validation", {})}


@dataclasses.dataclass(frozen=True)
class SavedModelResult:
    """What `export_savedmodel` wrote."""

    export_dir: str
    signatures: tuple[str, ...]
    outputs: tuple[str, ...]
    channels: tuple[str, ...]
    members: tuple[str, ...]


def export_savedmodel(predictor: Any, export_dir: str, statistics: Sequence[str] | None = None,
                      with_distributions: bool = False) -> SavedModelResult:
    """Writes ONE SavedModel serving the ensemble (float32 members) to `export_dir`, all or nothing.

    Signatures `serving_default` (`z_stack` uint16 `[batch, H, W, n]`, scaled by 1/65535) and `serving_float32`
    (float32 in [0, 1]), sides `64 + 16k`, -> `<CHANNEL>_<statistic>` `[batch, H, W]` float32 (and
    `<CHANNEL>_distribution` `[batch, H, W, 256]`). Beside it: export.json (signatures, members, weights) and a copy
    of ensemble.json.

    Raises:
        InputError: a statistic it does not serve, or a member without a graph form.
    """
    import tensorflow as tf

    ensemble = predictor.ensemble
    chosen = choose_statistics(ensemble.combination, statistics)
    graph = EnsembleGraph(ensemble, chosen, with_distributions)
    stack = tf.TensorSpec(export_lib.STACK_SHAPE, tf.float32, name="z_stack")
    floats = tf.function(graph.outputs, input_signature=[stack], autograph=False)

    def uint16(z_stack: Any) -> dict[str, Any]:
        return floats(tf.cast(z_stack, tf.float32) / export_lib.UINT16_MAX)

    module = tf.Module()
    # The members' variables alone, and the endpoints as signatures: tracked Keras models and tf.function attributes
    # are saved with every layer as an object and their own traced functions (as `write_saved_model` says).
    module.weights_read = bioimageio_graph.variables_of(graph.tracked)
    serve_uint16 = tf.function(uint16, input_signature=[tf.TensorSpec(export_lib.STACK_SHAPE, tf.uint16,
                                                                      name="z_stack")], autograph=False)
    signatures = {export_lib.SERVING_DEFAULT: serve_uint16.get_concrete_function(),
                  export_lib.SERVING_FLOAT32: floats.get_concrete_function()}
    config = ensemble.config
    info = {
        "format": EXPORT_FORMAT,
        "signatures": {
            export_lib.SERVING_DEFAULT: {"input": {"z_stack": "[batch, height, width, num_source_z] uint16 (scaled "
                                                              "by 1/65535)"}, "outputs": list(graph.output_names)},
            export_lib.SERVING_FLOAT32: {"input": {"z_stack": "[batch, height, width, num_source_z] float32 in "
                                                              "[0, 1]"}, "outputs": list(graph.output_names)},
        },
        "valid_sizes": f"height, width = {SIZE_MIN} + {SIZE_STEP}k (k >= 0)",
        "output_size": "the input's (each member reflection-pads inside the graph, as isl predict does at a well's "
                       "edges)",
        "num_z_values": config.channels.num_z_values,
        "z_mapping": "network z value f reads source slice round((num_source_z - 1) * f), half to even",
        "target_channels": list(graph.channels),
        "statistics": list(chosen),
        "with_distributions": with_distributions,
        "compute": "float32",
        "equals": "isl predict --model_dir=<the ensemble folder> on a well whose image is the input (members in "
                  "float32)",
        "ensemble": describe(ensemble),
        "served_members": [ensemble.members[m].model_dir for m in graph.used],
        "weights": {channel: ensemble.weights[channel] for channel in graph.channels},
    }
    export_dir = os.path.abspath(export_dir)
    with atomic.output_directory(export_dir) as temporary:
        tf.saved_model.save(module, temporary, signatures=signatures)
        atomic.write_text(os.path.join(temporary, export_lib.EXPORT_INFO_FILE), json.dumps(info, indent=2) + "\n")
        source = os.path.join(ensemble.source, ensemble_lib.ENSEMBLE_FILE)
        with open(source, encoding="utf-8") as stream:
            atomic.write_text(os.path.join(temporary, ensemble_lib.ENSEMBLE_FILE), stream.read())
    return SavedModelResult(export_dir, tuple(signatures), graph.output_names, graph.channels,
                            tuple(ensemble.members[m].model_dir for m in graph.used))
