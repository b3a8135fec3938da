"""`isl benchmark predict`: whole-well prediction speed, peak memory, speed-up.

Measures, in one process and one run:

1. dense tiled prediction (`isl.infer.predict.predict_image`) of a
   1024 x 1024 well with 13 z slices (synthetic pixels: speed does not
   depend on them) for its target channels (DAPI, MAP2, NFH, as the
   Condition B sample), median statistic, with the preset's model, randomly
   initialised, in float32 (and bfloat16 with `--precision=float32,bfloat16`),
   with the automatic tile size; time per repeat and the process's peak RSS;
2. the patch-wise method of the released code (one 250 px patch per 8 x 8
   block, batches of 16) on a small image (`valid` border, 32 x 32 output
   = 16 patches), and the dense method on the same small image;

and reports seconds per output megapixel of each, the speed-up of dense over
patch-wise, and the extrapolated patch-wise time of the 1024^2 well.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics as statistics_module
import sys
import time
from typing import Any

import numpy as np

TARGETS = ("DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL")
NUM_SOURCE_Z = 13
DEFAULT_SIZE = 1024
PATCH_OUTPUT = 32
PATCH_BATCH = 16


def _peak_rss_gb() -> float:
    """The process's peak resident set size so far, GB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _model(preset: str, precision: str):
    from isl import presets
    from isl.model import builder
    from isl.model import geometry as geometry_lib

    config = presets.get_preset(preset)
    wanted = "bfloat16" if precision == "bfloat16" else ""
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=wanted))
    model = builder.build_model(config)
    return config, model, geometry_lib.geometry(config.model)


def _heads(config) -> list[int]:
    channels = config.channels
    names = [name for name in TARGETS if name in channels.output_target_channels]
    if not names:
        names = list(channels.output_target_channels[:3])
    return [channels.num_input_heads + channels.output_target_channels.index(name) for name in names]


def _time(function, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics_module.median(times), times


def run(flag_values: Any) -> dict[str, Any]:
    from isl.infer import predict

    preset = flag_values["preset"].value
    repeats = max(1, flag_values["repeats"].value)
    size = flag_values["image_size"].value or DEFAULT_SIZE
    precisions = [value.strip() for value in _flag(flag_values, "precision", "float32").split(",") if value.strip()]
    rng = np.random.default_rng(0)
    stack = rng.random((NUM_SOURCE_Z, size, size), dtype=np.float32)
    result: dict[str, Any] = {"preset": preset, "image": [NUM_SOURCE_Z, size, size], "repeats": repeats, "runs": {}}
    command = f"isl benchmark predict --preset={preset} --repeats={repeats} --precision={','.join(precisions)}"
    if flag_values["image_size"].value:
        command += f" --image_size={size}"
    result["command"] = command
    print(f"# {command}")
    for precision in precisions:
        config, model, geometry = _model(preset, precision)
        heads = _heads(config)
        network = predict.Network.from_keras(model, heads)
        run_function = predict.make_run_function(network, ("median",))
        tile_size = predict.auto_tile_size(geometry, config.model, len(heads))
        num_z = config.channels.num_z_values

        def dense(image=stack, tile=tile_size, border="reflect"):
            return predict.predict_image(
                network, image, geometry, num_z, statistics=("median",), border_mode=border,
                tile_size=tile, run_function=run_function,
            )

        start = time.perf_counter()
        first = dense()
        first_seconds = time.perf_counter() - start  # Includes tracing.
        seconds, times = _time(dense, repeats)
        peak = _peak_rss_gb()
        megapixels = size * size / 1e6
        entry = {
            "precision": precision,
            "heads": len(heads),
            "tile_size": list(first.info["tile_size"]),
            "tile_runs": first.info["num_runs"],
            "first_call_seconds": round(first_seconds, 2),
            "seconds": round(seconds, 2),
            "times": [round(value, 2) for value in times],
            "peak_rss_gb": round(peak, 2),
        }
        print(
            f"[{precision}] dense {size}x{size}x{NUM_SOURCE_Z} -> {len(heads)} target channels, median: "
            f"{seconds:.2f} s (repeats {', '.join(f'{t:.2f}' for t in times)}; first call with tracing "
            f"{first_seconds:.2f} s), tiles {first.info['tile_size'][0]} px x {first.info['num_runs']} runs, "
            f"peak RSS {peak:.2f} GB"
        )
        # Patch-wise on a small image: valid border, PATCH_OUTPUT^2 output.
        small_side = PATCH_OUTPUT + 2 * geometry.border
        small = stack[:, :small_side, :small_side]
        patch_seconds, patch_times = _time(
            lambda: predict.predict_patchwise(
                network, small, geometry, num_z, statistics=("median",), border_mode="valid",
                batch_size=PATCH_BATCH, run_function=run_function,
            ),
            max(1, min(repeats, 2)),
        )
        dense_small, _ = _time(lambda: dense(small, None, "valid"), repeats)
        small_megapixels = PATCH_OUTPUT * PATCH_OUTPUT / 1e6
        patch_rate = patch_seconds / small_megapixels
        dense_rate = seconds / megapixels
        entry.update(
            {
                "patchwise_image": [NUM_SOURCE_Z, small_side, small_side],
                "patchwise_patches": (PATCH_OUTPUT // geometry.output_size) ** 2,
                "patchwise_seconds": round(patch_seconds, 2),
                "dense_small_seconds": round(dense_small, 3),
                "patchwise_seconds_per_megapixel": round(patch_rate, 1),
                "dense_seconds_per_megapixel": round(dense_rate, 2),
                "speedup_vs_patchwise": round(patch_rate / dense_rate, 1),
                "speedup_same_small_image": round(patch_seconds / dense_small, 1),
                "patchwise_extrapolated_seconds": round(patch_rate * megapixels, 0),
            }
        )
        print(
            f"[{precision}] patch-wise {small_side}x{small_side} ({entry['patchwise_patches']} patches of "
            f"{geometry.input_size} px, batch {PATCH_BATCH}): {patch_seconds:.2f} s = {patch_rate:.0f} s/Mpx; "
            f"dense on the same image {dense_small:.3f} s; dense on {size}^2: {dense_rate:.2f} s/Mpx"
        )
        print(
            f"[{precision}] speed-up over patch-wise: {entry['speedup_vs_patchwise']:.0f}x per output pixel "
            f"({entry['speedup_same_small_image']:.0f}x on the same small image); patch-wise {size}^2 would take "
            f"~{entry['patchwise_extrapolated_seconds']:.0f} s"
        )
        result["runs"][precision] = entry
        del model, network, run_function
        sys.stdout.flush()
    result["peak_rss_gb"] = round(_peak_rss_gb(), 2)
    print("Shared 2-core machine: absolute times are noisy; the ratios are measured side by side in this run.")
    return result


def _flag(flag_values: Any, name: str, default: str) -> str:
    return flag_values[name].value if name in flag_values and flag_values[name].value else default
