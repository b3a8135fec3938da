"""Streaming prediction: bands of rows in order, equal to the whole image; precision chosen by the CPU."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from isl import errors
from isl import presets
from isl.infer import predict
from isl.infer import well as well_lib
from isl.model import builder
from isl.model import geometry as geometry_lib


@pytest.fixture(scope="module")
def paper_like():
    # Five scales (phase 16), 8-px outputs: two phase classes per axis, so rows complete out of run order.
    config = presets.get_preset("tiny")
    model = dataclasses.replace(config.model, num_scales=5, lower_modules_scale_0=4, lower_modules_step=1,
                                upper_tower_modules=6, output_size=8)
    config = dataclasses.replace(config, model=model)
    return config, builder.build_model(config)


def test_stream_image_hands_out_every_row_once_in_order_equal_to_one_run(paper_like):
    config, model = paper_like
    geometry = geometry_lib.geometry(config.model)
    heads = list(range(config.channels.num_input_heads, config.channels.num_heads))[:2]
    run = predict.make_run_function(predict.Network.from_keras(model, heads), ("median", "mean"))
    stack = np.random.default_rng(1).random((13, 61, 45), dtype=np.float32)
    window = (5, 58, 3, 40)
    whole = predict.predict_image(None, stack, geometry, config.channels.num_z_values, statistics=("median", "mean"),
                                  run_function=run, window=window)
    region, wanted, plan = predict.plan_image(stack.shape[1:], geometry, "reflect", geometry.input_size
                                              + geometry.phase, "exact", window)
    assert len(plan.rows.runs) >= 4 and len({run.start % geometry.phase for run in plan.rows.runs}) == 2
    bands = []

    def keep(row0, images):  # A copy: the bands are views of the stitcher's reused buffer.
        bands.append((row0, {name: band.copy() for name, band in images.items()}))

    predict.stream_image(plan, region, wanted, stack, predict._default_network_input(config.channels.num_z_values),
                         run, keep)
    starts = [row0 for row0, _ in bands]
    ends = [row0 + images["mean"].shape[0] for row0, images in bands]
    assert starts[0] == 0 and starts[1:] == ends[:-1] and ends[-1] == wanted.height
    assert all(images["mean"].shape[1:] == (wanted.width, 2) for _, images in bands)
    streamed = np.concatenate([images["mean"] for _, images in bands])
    np.testing.assert_allclose(streamed, whole.statistics["mean"], atol=1e-5)


def test_band_stitcher_refuses_rows_not_yet_complete():
    config = presets.get_preset("tiny")
    geometry = geometry_lib.geometry(config.model)
    plan = predict.tiling.plan_tiles((40, 24), geometry, geometry.input_size + geometry.phase)
    stitcher = predict.BandStitcher(plan, (1,))
    row, column = plan.rows.runs[0], plan.columns.runs[0]
    stitcher.add(row, column, np.ones((len(row.blocks) * plan.rows.block, len(column.blocks) * plan.columns.block, 1),
                                      np.float32))
    with pytest.raises(ValueError, match="not complete"):
        stitcher.pop(plan.rows.block)  # Only the first column run is in.


def test_precision_follows_training_where_the_cpu_has_native_bfloat16(tmp_path):
    native, emulated = tmp_path / "native", tmp_path / "emulated"
    native.write_text("processor : 0\nflags : fpu avx512f amx_bf16 amx_tile\n")
    emulated.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert well_lib.native_bfloat16(str(native)) and not well_lib.native_bfloat16(str(emulated))
    assert not well_lib.native_bfloat16(str(tmp_path / "missing"))
    assert well_lib.default_precision("bfloat16", native=True) == ""  # As trained.
    assert well_lib.default_precision("bfloat16", native=False) == "float32"
    assert well_lib.default_precision("", native=False) == ""


def test_check_memory_names_the_flag_to_change():
    layout = well_lib.RunLayout(region=None, wanted=None, plan=None, tile_size=458)
    parts = {"runtime": 0.8e9, "tiles": 3e9, "well": 0.1e9, "rows": 0.2e9, "panels": 0.1e9}
    parts["total"] = sum(parts.values())
    assert well_lib.check_memory(parts, layout, available_bytes=8e9).startswith("Expected peak memory: 4.2 GB")
    with pytest.raises(errors.InputError, match=r"4\.2 GB .*2\.0 GB free.*lower --tile_size \(now 458\)"):
        well_lib.check_memory(parts, layout, available_bytes=2e9)
    parts.update(tiles=0.1e9, rows=3e9)
    with pytest.raises(errors.InputError, match="fewer --statistics or --nopanels"):
        well_lib.check_memory(parts, layout, available_bytes=2e9)


@pytest.mark.slow  # Two predictions of the tiny model (about 26 s on the shared 2 cores); the read itself is
# compared fast in tests/data/test_lazy_wells.py.
def test_predict_well_reads_the_well_lazily_with_the_same_files(tiny_model_dir, tmp_path, monkeypatch):
    from isl.data import wells as wells_lib
    from isl.infer.kinds import registry
    from tests.data import wellmaker

    wellmaker.random_well(str(tmp_path / "well"), num_z=13, height=70, width=53)
    predictor = registry.load_predictor(tiny_model_dir)
    options = dict(statistics=("median",), tile_size=predictor.geometry.input_size + 8, panels=False,
                   progress_enabled=False)
    read_well = wells_lib.read_well
    lazy_reads = []

    def spy(*args, **kwargs):
        lazy_reads.append(kwargs.get("lazy", False))
        return read_well(*args, **kwargs)

    monkeypatch.setattr(wells_lib, "read_well", spy)
    lazy = registry.predict_well(predictor, str(tmp_path / "well"), str(tmp_path / "lazy"), **options)
    monkeypatch.setattr(wells_lib, "read_well", lambda *args, **kwargs: read_well(*args, **{**kwargs, "lazy": False}))
    whole = registry.predict_well(predictor, str(tmp_path / "well"), str(tmp_path / "whole"), **options)
    assert lazy_reads == [True]
    names = sorted(os.listdir(whole["well_dir"]))
    assert names == sorted(os.listdir(lazy["well_dir"])) and len(names) > 5  # Images, calibration maps, json.
    for name in names:
        if name != "prediction.json":
            with open(os.path.join(whole["well_dir"], name), "rb") as one, \
                    open(os.path.join(lazy["well_dir"], name), "rb") as other:
                assert one.read() == other.read(), name



@pytest.mark.parametrize("rows", [300, 1200])
def test_band_stitcher_holds_about_two_row_runs_whatever_the_height(rows):
    """The stitcher's buffer stays near the modelled two row runs of the output width (`expected_peak_bytes`'
    rows), for a short and a tall image. Before it reused its buffer, each row run concatenated a new one
    while the old (viewed by the popped band) was alive: about twice that at the peak."""
    import tracemalloc

    config = presets.get_preset("tiny")
    geometry = geometry_lib.geometry(config.model)
    plan = predict.tiling.plan_tiles((rows, 500), geometry, geometry.input_size + 4 * geometry.output_size)
    trailing = (16,)
    values = {}
    for row, column in plan.runs():
        shape = (len(row.blocks) * plan.rows.block, len(column.blocks) * plan.columns.block) + trailing
        values.setdefault(shape, np.full(shape, 0.5, np.float32))
    modelled = 2 * plan.run_output_shape[0] * plan.columns.grid_length * trailing[0] * 4
    stitcher = predict.BandStitcher(plan, trailing)
    row_runs = sorted(plan.rows.runs, key=lambda run: run.start)
    handed = 0
    tracemalloc.start()
    try:
        for position, row in enumerate(row_runs):
            for column in plan.columns.runs:
                shape = (len(row.blocks) * plan.rows.block, len(column.blocks) * plan.columns.block) + trailing
                stitcher.add(row, column, values[shape])
            complete = row_runs[position + 1].start if position + 1 < len(row_runs) else plan.rows.grid_length
            handed += stitcher.pop(min(complete, plan.rows.output_length)).shape[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert handed == rows
    assert peak < 1.25 * modelled, (peak, modelled)
