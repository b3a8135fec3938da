"""The settings of `isl benchmark data|model|predict`, as one typed value.

The CLI (`isl.cli.benchmark`) reads its flags into a `BenchmarkOptions`;
each benchmark's `run(options)` reads only this (library code reads no
flags). A field that a benchmark does not use is ignored by it.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BenchmarkOptions:
    """What to benchmark and how.

    Attributes:
        preset: the named config (model geometry, batch size).
        data_dir: data: an image folder or an `isl convert` output.
        sample_dir: a real sample well (image folder).
        repeats: timing repeats (the median and the spread are reported).
        image_size: image side for synthetic inputs (None: per benchmark).
        batch_size: batch size (None: the preset's).
        steps: batches per timing repeat (None: per benchmark).
        precision: "float32" or "bfloat16" (model: a comma-separated list).
        precision_given: the user chose `precision` (predict with a model
            directory otherwise runs it as trained).
        output_sizes: model: output sizes of the throughput table, e.g. "8,24,56" ("" : the variants).
        memory_budget_gb: model: modelled memory budget of the throughput table.
        model_dir: predict: a trained model directory (None: the preset, random weights).
        plans: predict: plans to compare, comma-separated.
        tile_size: predict: tile side (0: from memory).
        model_steps: data: timed training steps of the preset's model (0 skips).
        sizes: scaling: image sides, comma-separated.
        commands: scaling: commands to measure, comma-separated (predict, evaluate, readout, train, convert,
            export, predict_unet, predict_readout, predict_ensemble).
        unet_model_dir: scaling: a unet_regression model for predict_unet.
        readout_model_dir: scaling: a read-out model folder (readout.json) for predict_readout.
        ensemble_model_dir: scaling: an ensemble folder (ensemble.json) for predict_ensemble.
    """

    preset: str = "paper"
    data_dir: str | None = None
    sample_dir: str | None = None
    repeats: int = 3
    image_size: int | None = None
    batch_size: int | None = None
    steps: int | None = None
    precision: str = "float32"
    precision_given: bool = False
    output_sizes: str = ""
    memory_budget_gb: float = 16.0
    model_dir: str | None = None
    plans: str = "old,new"
    tile_size: int = 0
    model_steps: int = 2
    sizes: str = "512,1024,2048,4096"
    commands: str = "predict,evaluate,readout,train"
    unet_model_dir: str | None = None
    readout_model_dir: str | None = None
    ensemble_model_dir: str | None = None
