"""`isl readout`: Fit a ridge read-out of a trained network to your own images in minutes (beyond the paper)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from typing import Any

SUMMARY = "Fit a ridge read-out of a trained network's frozen core to your own wells, in minutes (beyond the paper)."
DESCRIPTION = """
Adapt a trained network to your microscope and stains in minutes instead of
hours, by fitting a read-out of its frozen core (an option beyond the paper).

The network's core runs once over each training well (in tiles, like `isl
predict`). Each pixel's 64-channel embedding, plus its averages over
windows of radius --radii (local context), becomes the features of a ridge
regression onto each target channel, solved in closed form. Nothing is
trained by gradient descent, so the fit costs about one prediction per
training well plus seconds.

Writes a model folder, --output_dir: the network's config.json and
model.weights.h5 (unchanged) and readout.json (the fitted read-out and what
it scored). `isl predict --model_dir=OUTPUT_DIR` then writes the read-out's
prediction, and `isl evaluate` scores it as usual. Each pixel gets a normal
distribution: a second ridge regression on the same features predicts how
far off the value tends to be there, so --statistics=median,std,q05,q95 gives
the value, its uncertainty and a 90% band (the network's own 256-bin
distribution is not used). With --eval_dir it reports how often the truth
falls inside the 50% and 90% intervals.

Training wells need the transmitted-light stack and the target images, in
the lab's file naming or a manifest (data/README.md). The wells are read
as `isl predict` reads them: --normalization (default: the model's
data.normalization; raw microscope data with the shipped checkpoint need
paper), --channel_map (e.g. BRIGHTFIELD=PHASE_CONTRAST,HOECHST=DAPI_CONFOCAL
for a bright-field stack and a Hoechst image) and --set data.*; the values
used are recorded in OUTPUT_DIR/config.json, so `isl predict` applies them.
--region fits on a window of every training well and --eval_region scores a
window of every --eval_dir well (r0:r1,c0:c1); the core reads the context
around the window, so its pixels get the same features as in the whole well. Measured on 2 CPU cores from the shipped
checkpoint: a 512 x 512 phase-contrast -> nuclear-stain pair in about a
minute, reaching Pearson r 0.92 on a second well, with the truth inside the
predicted 90% interval for 88% of its pixels.

Example:
  isl readout --model_dir=checkpoints/condition_b_sample --train_dir=plate/well-A1 \\
      --eval_dir=plate/well-A2 --targets=DAPI_CONFOCAL --output_dir=models/my_readout
  isl predict --model_dir=models/my_readout --input_dir=plate/well-B1 --output_dir=predictions \
      --statistics=median,std,q05,q95
"""

# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("output_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    from isl.cli import data_flags

    flags.DEFINE_string("model_dir", None, "Trained model folder whose core is used, frozen (e.g. "
                        "checkpoints/condition_b_sample).", flag_values=flag_values)
    flags.DEFINE_multi_string("train_dir", [], "Folder of one training well with target images; repeat for several.",
                              flag_values=flag_values)
    flags.DEFINE_multi_string("eval_dir", [], "Folder of one well to score (Pearson r per target); repeat for several.",
                              flag_values=flag_values)
    flags.DEFINE_list("targets", [], "Target channels to fit (default: every target channel of the model found in "
                      "the first training well).", flag_values=flag_values)
    flags.DEFINE_list("radii", ["1", "2", "4", "8"], "Radii in pixels of the local averages added as features.",
                      flag_values=flag_values)
    flags.DEFINE_float("penalty", 100.0, "Ridge penalty on the standardized features.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "New model folder to write (config.json, model.weights.h5, readout.json).",
                        flag_values=flag_values)
    flags.DEFINE_bool("progress", True, "Show a progress line on stderr.", flag_values=flag_values)
    data_flags.define(flag_values, ("normalization", "channel_map", "set", "region", "eval_region"),
                      region_help="Fit on this window r0:r1,c0:c1 of every training well only (image pixels, ends "
                      "exclusive; an empty end means the edge); the core reads its context around it.",
                      eval_region_help="Score only this window r0:r1,c0:c1 of every --eval_dir well.")


def _check_output_dir(output_dir: str, model_dir: str) -> None:
    from isl import errors
    from isl.io import model_dir as model_dir_lib

    if os.path.abspath(output_dir) == os.path.abspath(model_dir):
        raise errors.InputError("--output_dir must be a new folder, not --model_dir (the network is copied into it).")
    if os.path.isfile(output_dir):
        raise errors.InputError(f"{output_dir}: exists and is a file; --output_dir must be a folder.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not os.path.isfile(
            model_dir_lib.ModelDir(output_dir).readout):
        raise errors.InputError(f"{output_dir}: exists and is not a read-out folder; choose a new --output_dir "
                                "(an earlier read-out folder is replaced).")


# The fit's peak RSS, measured (`isl benchmark scaling`, BUILD_NOTES "Session 8, issue 25"): the network, one
# row of embedding tiles and one band of features (BASE_BYTES). The wells are read lazily (session 9): of a well's
# pixels only the plane being decoded is held (PLANE_BYTES_PER_PIXEL: its integer and float32 copies), the rest
# waits in a temporary file.
BASE_BYTES = 2.7e9
PLANE_BYTES_PER_PIXEL = 6.0


def expected_peak_bytes(height: int, width: int, planes: int) -> float:
    """The modelled peak RSS of `isl readout` for its largest well (`planes` = z slices + target images: kept for
    the message; one plane at a time is held)."""
    return BASE_BYTES + PLANE_BYTES_PER_PIXEL * height * width


def check_memory(config: Any, well_dirs: list[str]) -> None:
    """Prints the expected peak memory from the wells' image headers; refuses when it exceeds the memory available.

    Raises:
        InputError: naming the largest well and what to change.
    """
    import psutil

    from isl import errors
    from isl.data import channel_map as channel_map_lib
    from isl.data import wells as wells_lib

    mapping = channel_map_lib.parse(config.data.channel_map)
    largest = (0, "", 0, 0, 0)
    for directory in well_dirs:
        for well in wells_lib.scan_wells([directory], config.channels, ignore_unknown=True,
                                         channel_map=mapping).wells:
            planes = well.num_source_z + len(well.targets)
            largest = max(largest, (well.height * well.width * planes, directory, well.height, well.width, planes))
    _, directory, height, width, planes = largest
    needed = expected_peak_bytes(height, width, planes)
    available = psutil.virtual_memory().available
    print(f"Expected peak memory: about {needed / 1e9:.1f} GB (largest well {directory}: {height}x{width}, "
          f"{planes} planes); {available / 1e9:.1f} GB available now.", file=sys.stderr, flush=True)
    if needed > available:
        raise errors.InputError(
            f"--train_dir/--eval_dir: the read-out needs about {needed / 1e9:.1f} GB for {directory} "
            f"({height}x{width}, {planes} planes), more than the {available / 1e9:.1f} GB available now; split that "
            "field into smaller wells or stop other jobs.")


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    from isl import config as config_lib
    from isl import errors
    from isl import progress as progress_lib
    from isl.cli import data_flags
    from isl.io import atomic
    from isl.io import model_dir as model_dir_lib
    from isl.model import readout as readout_lib
    from isl.model import saving
    from isl.train import readout as fit_lib

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    for name in ("model_dir", "output_dir"):
        if not flag_values[name].value:
            raise errors.InputError(f"--{name} is required.")
    train_dirs, eval_dirs = flag_values["train_dir"].value, flag_values["eval_dir"].value
    if not train_dirs:
        raise errors.InputError("--train_dir is required (the folder of one well with target images; repeat for "
                                "several).")
    try:
        radii = [int(value) for value in flag_values["radii"].value]
    except ValueError:
        raise errors.InputError(f"--radii must be integers. Received: {','.join(flag_values['radii'].value)}") from None
    model_dir, output_dir = flag_values["model_dir"].value, flag_values["output_dir"].value
    _check_output_dir(output_dir, model_dir)
    source = model_dir_lib.ModelDir(model_dir)
    missing = source.missing()
    if missing:
        raise errors.InputError(f"{model_dir}: not a model directory ({', '.join(missing)} missing).")
    region, eval_region = data_flags.region(flag_values), data_flags.region(flag_values, "eval_region")
    if eval_region is not None and not eval_dirs:
        raise errors.InputError("--eval_region needs --eval_dir (the wells to score).")
    model, config = saving.load_model_dir(model_dir, input_size=None)
    config = data_flags.model_config(config, flag_values, model_dir, "readout")
    check_memory(config, list(train_dirs) + list(eval_dirs))
    enabled = flag_values["progress"].value
    bars: list[progress_lib.Progress] = []

    def progress(label: str, total: int):
        for bar in bars:
            bar.close()
        bars[:] = [progress_lib.Progress(total, label, enabled=enabled)]
        return lambda: bars[0].update(1)

    try:
        fitted = fit_lib.fit(model, config, train_dirs, flag_values["targets"].value, radii,
                             flag_values["penalty"].value, eval_dirs, progress=progress, region=region,
                             eval_region=eval_region)
    finally:
        for bar in bars:
            bar.close()
    with atomic.output_directory(output_dir) as temporary:
        target = model_dir_lib.ModelDir(temporary)
        # The network's config with the data contract the read-out was fitted under (normalisation, channel
        # map), so `isl predict` reads new wells the same way.
        config_lib.save_config(config, target.config)
        shutil.copyfile(source.weights, target.weights)
        record = dict(fitted.record, source_model_dir=os.path.abspath(model_dir))
        readout_lib.save(dataclasses.replace(fitted, record=record), target.readout)
    record = fitted.record
    print(f"Read-out fitted on {len(train_dirs)} well(s), {record['pixels']:,} pixels, {len(fitted.radii)} context "
          f"radii, penalty {fitted.penalty:g}, in {record['seconds']:.0f} s.")
    for name in fitted.targets:
        line = f"  {name:<18} training R^2 {record['train_r_squared'][name]:.3f}"
        for directory, scores in record["eval_pearson_r"].items():
            inside = record["eval_interval_coverage"][directory][name]
            line += (f"   {os.path.basename(os.path.normpath(directory))}: Pearson r {scores[name]:.3f}, truth inside "
                     + ", ".join(f"the {level:.0%} interval {share:.0%}"
                                 for level, share in zip(record["coverage_levels"], inside)))
        print(line)
    print(f"Read the wells with normalization {config.data.normalization}"
          + (f", channel map {','.join(config.data.channel_map)}" if config.data.channel_map else "")
          + (f", training window {record['region']}" if record["region"] else "")
          + (f", scoring window {record['eval_region']}" if record["eval_region"] else "")
          + "; recorded in config.json for isl predict.")
    print(f"Model: {os.path.abspath(output_dir)} (config.json, model.weights.h5, readout.json)")
    print(f"Predict with: isl predict --model_dir={output_dir} --input_dir=WELL --output_dir=PREDICTIONS")
    return {"output_dir": os.path.abspath(output_dir), "targets": list(fitted.targets), **record}
