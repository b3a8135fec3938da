"""`isl benchmark predict`: whole-well prediction, old plan and new plan side by side.

Predicts one well (4 channels by default: the model's target heads, median)
with several plans in one run, each in its own fresh process (own peak RSS,
own one-off costs), and reports per plan: seconds of the first call (with
graph tracing) and of the repeats, CPU seconds, output pixels per second, peak
RSS, and the ratio to the first plan. Plans (`--plans`, comma-separated):

* `old`: the first version: `out`-wide blocks (4 runs per tile for the paper
  model and for the shipped 24-px checkpoint), the trained Keras graph;
* `new` (the default of `isl predict`): the model's exact plan (one run per
  tile for models trained with outputs of 8 + 16k, k >= 1) and the inference
  graph (batch norm folded into the activation, `isl.infer.graph`);
* `new_xla`: `new` with the whole run XLA-compiled (an experiment);
* `one`: one run per tile for any model (`--phases=1`), inference graph.

The medians of every plan are compared with the first plan's (fraction of
pixels equal, mean and max absolute difference in 8-bit levels).

The model: `--model_dir` (e.g. checkpoints/condition_b_sample, as trained,
bfloat16 for that one), else the `--preset`'s network randomly initialised in
`--precision`. The well: `--sample_dir` (a real well; mirrored, then cropped,
to `--image_size` square: the 1024 x 768 Condition B sample plus its mirror
image gives a 1024 x 1024 13-z well), else synthetic pixels (speed does not
depend on them). `--image_size` defaults to 1024.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import resource
import time
from typing import Any

import numpy as np

from isl.benchmarks.options import BenchmarkOptions

TARGETS = ("DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL", "NEURITE_CONFOCAL")
NUM_SOURCE_Z = 13
DEFAULT_SIZE = 1024
PLANS = {
    # name -> (tiling plan, inference graph, XLA)
    "old": ("output", False, False),
    "new": ("exact", True, False),
    "new_xla": ("exact", True, True),
    "one": ("one", True, False),
}


def _peak_rss_gb() -> float:
    """The process's peak resident set size so far, GB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def well_stack(sample_dir: str | None, size: int, channels: Any) -> np.ndarray:
    """`[13, size, size]` float32: the sample mirrored to a square, or random pixels."""
    if not sample_dir:
        return np.random.default_rng(0).random((NUM_SOURCE_Z, size, size), dtype=np.float32)
    from isl.data import wells

    stack = wells.read_well(sample_dir, channels, ignore_unknown=True).inputs
    while stack.shape[1] < size:
        stack = np.concatenate([stack, stack[:, ::-1]], axis=1)
    while stack.shape[2] < size:
        stack = np.concatenate([stack, stack[:, :, ::-1]], axis=2)
    return np.ascontiguousarray(stack[:, :size, :size])


def _load(model_dir: str | None, preset: str, precision: str, inference_graph: bool):
    from isl.infer import well as well_lib
    from isl.infer.kinds import heads
    from isl.infer.kinds import registry

    if model_dir:
        return registry.load_predictor(model_dir, precision=precision if precision != "as_trained" else "",
                                       inference_graph=inference_graph)
    from isl import presets
    from isl.model import builder
    from isl.model import geometry as geometry_lib

    import keras

    keras.utils.set_random_seed(0)  # The same random weights in every plan's process.
    config = presets.get_preset(preset)
    wanted = "bfloat16" if precision == "bfloat16" else ""
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=wanted))
    return well_lib.Predictor(config=config, geometry=geometry_lib.geometry(config.model), source=preset,
                              model=builder.build_model(config), inference_graph=inference_graph, kind=heads.KIND)


def _heads(config) -> tuple[list[int], list[str]]:
    channels = config.channels
    names = [name for name in TARGETS if name in channels.output_target_channels] or list(
        channels.output_target_channels[:4]
    )
    return [channels.num_input_heads + channels.output_target_channels.index(name) for name in names], names


def run_plan(settings: dict[str, Any]) -> dict[str, Any]:
    """One plan in this process: load, predict (first call + repeats), measure."""
    from isl.infer import graph as graph_lib
    from isl.infer import predict

    plan_name, inference_graph, xla = PLANS[settings["plan"]]
    predictor = _load(settings["model_dir"], settings["preset"], settings["precision"], inference_graph)
    config, geometry = predictor.config, predictor.geometry
    stack = well_stack(settings["sample_dir"], settings["size"], config.channels)
    heads, names = _heads(config)
    model = graph_lib.inference_model(predictor.model) if inference_graph else predictor.model
    network = predict.Network.from_keras(model, heads)
    run_function = predict.make_run_function(network, ("median",), jit_compile=xla)
    tile_size = settings["tile_size"] or predict.auto_tile_size(
        geometry, config.model, len(heads), plan_name=plan_name, dtype=predictor.compute_dtype
    )
    rss_before = _peak_rss_gb()

    def once():
        return predict.predict_image(
            network, stack, geometry, config.channels.num_z_values, statistics=("median",),
            tile_size=tile_size, run_function=run_function, plan_name=plan_name,
        )

    cpu, start = _cpu_seconds(), time.perf_counter()
    result = once()
    first, first_cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    times, cpus = [], []
    for _ in range(settings["repeats"]):
        cpu, start = _cpu_seconds(), time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu)
    seconds = float(np.median(times)) if times else first
    pixels = result.region.height * result.region.width
    return {
        "plan": settings["plan"],
        "tiling": plan_name,
        "inference_graph": inference_graph,
        "xla": xla,
        "exact": result.info["exact"],
        "channels": names,
        "tile_size": list(result.info["tile_size"]),
        "tile_runs": result.info["num_runs"],
        "first_call_seconds": round(first, 2),
        "first_call_cpu_seconds": round(first_cpu, 2),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(float(np.median(cpus)) if cpus else first_cpu, 2),
        "times": [round(value, 2) for value in times],
        "output_pixels_per_second": round(pixels / seconds, 1),
        "model_rss_gb": round(rss_before, 2),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "median": result.statistics["median"],
    }


def _compare(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    levels = np.abs(np.round(reference * 255) - np.round(other * 255))
    return {
        "equal_fraction": round(float(np.mean(levels == 0)), 4),
        "mean_abs_levels": round(float(levels.mean()), 3),
        "max_abs_levels": int(levels.max()),
    }


def run(options: BenchmarkOptions) -> dict[str, Any]:
    """Entry point of `isl benchmark predict` (options: plans, image_size, model_dir or preset, precision,
    sample_dir, repeats, tile_size)."""
    from isl import errors

    plans = [name.strip() for name in options.plans.split(",") if name.strip()]
    unknown = [name for name in plans if name not in PLANS]
    if unknown or not plans:
        raise errors.InputError(f"--plans: unknown {', '.join(unknown) or 'nothing'}; use {', '.join(PLANS)}.")
    size = options.image_size or DEFAULT_SIZE
    model_dir = options.model_dir
    precision = options.precision if (options.precision_given or not model_dir) else ""  # A model dir: as trained.
    if precision not in ("", "float32", "bfloat16"):
        raise errors.InputError(
            f"--precision: use float32 or bfloat16 for the predict benchmark. Received: {precision}"
        )
    repeats = max(0, options.repeats)
    base = {
        "model_dir": model_dir, "preset": options.preset, "precision": precision,
        "sample_dir": options.sample_dir, "size": size, "repeats": repeats, "tile_size": options.tile_size,
    }
    command = f"isl benchmark predict --plans={','.join(plans)} --image_size={size} --repeats={repeats}"
    command += f" --model_dir={model_dir}" if model_dir else f" --preset={base['preset']}"
    command += f" --precision={precision}" if precision else ""
    if base["sample_dir"]:
        command += f" --sample_dir={base['sample_dir']}"
    if base["tile_size"]:
        command += f" --tile_size={base['tile_size']}"
    print(f"# {command}", flush=True)
    from isl import quiet

    context = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {}
    medians: dict[str, np.ndarray] = {}
    for name in plans:
        with quiet.stderr_silenced():  # The child's TensorFlow start-up; its errors come back as exceptions.
            pool = context.Pool(1)
        with pool:
            entry = pool.apply(run_plan, ({**base, "plan": name},))
        medians[name] = entry.pop("median")
        results[name] = entry
        print(
            f"[{name}] {size}x{size}x{NUM_SOURCE_Z} -> {len(entry['channels'])} channels, "
            f"median: {entry['seconds']:.1f} s "
            f"(CPU {entry['cpu_seconds']:.1f} s; first call with tracing {entry['first_call_seconds']:.1f} s), "
            f"{entry['output_pixels_per_second']:.0f} output px/s, {entry['tile_runs']} runs of "
            f"{entry['tile_size'][0]} px, peak RSS {entry['peak_rss_gb']:.2f} GB"
            f"{'' if entry['exact'] else ' (approximate)'}",
            flush=True,
        )
    first = plans[0]
    for name in plans[1:]:
        entry = results[name]
        entry["speedup_vs_" + first] = round(results[first]["seconds"] / entry["seconds"], 2)
        entry["cpu_speedup_vs_" + first] = round(results[first]["cpu_seconds"] / entry["cpu_seconds"], 2)
        entry["median_vs_" + first] = _compare(medians[first], medians[name])
        print(
            f"[{name} vs {first}] {entry['speedup_vs_' + first]:.2f}x faster (CPU seconds "
            f"{entry['cpu_speedup_vs_' + first]:.2f}x); medians: {entry['median_vs_' + first]}",
            flush=True,
        )
    print("The machine may be shared: absolute seconds are noisy; the ratios come from this one run.")
    return {"command": command, "image": [NUM_SOURCE_Z, size, size], "plans": results}
