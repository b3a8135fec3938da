"""The tile plan owns every output block exactly once, with the right phase."""

from __future__ import annotations

import pytest

from isl import presets
from isl.infer import tiling
from isl.model import geometry as geometry_lib
from tests.infer import fakes


def _paper_geometry():
    return geometry_lib.geometry(presets.get_preset("paper").model)


def _tiny_geometry():
    return geometry_lib.geometry(presets.get_preset("tiny").model)


def test_block_classes_follow_phase_and_output_size():
    assert tiling.block_classes(_paper_geometry()) == (0, 8)
    assert tiling.block_classes(_tiny_geometry()) == (0,)
    assert tiling.block_classes(fakes.fake_geometry(12, 2, 16)) == (0, 4, 8, 12)


@pytest.mark.parametrize("length", [1, 8, 9, 100, 1024, 1023])
@pytest.mark.parametrize("tile_size", [None, 250, 490, 1000])
def test_axis_plan_owns_every_block_once_with_a_consistent_phase(length, tile_size):
    geometry = _paper_geometry()
    plan = tiling.plan_axis(length, geometry, tile_size)
    owned = sorted(block for run in plan.runs for block in run.blocks)
    assert owned == list(range(0, plan.grid_length, 8))
    assert plan.grid_length >= length > plan.grid_length - 8
    assert (plan.run_input_length - 250) % 16 == 0
    assert plan.run_output_length == plan.run_input_length - 242
    if tile_size is not None:
        assert plan.run_input_length <= max(tile_size, 250)
    for run in plan.runs:
        for block in run.blocks:
            # Equivariance windows of the run start at start + 16 j.
            assert (block - run.start) % 16 == 0
            assert block + 8 <= run.start + plan.run_output_length


def test_whole_1024_image_needs_two_runs_per_axis_for_the_paper_model():
    plan = tiling.plan_tiles((1024, 1024), _paper_geometry())
    assert plan.num_runs == 4
    assert plan.run_input_shape == (250 + 16 * 63, 250 + 16 * 63)


def test_tiny_geometry_needs_one_class_and_no_wasted_output():
    plan = tiling.plan_axis(64, _tiny_geometry())
    assert len(plan.runs) == 1
    assert plan.run_output_length == 64
    assert plan.run_input_length == 64 + 2 * 17


def test_auto_tile_size_grows_with_the_budget_and_stays_valid():
    geometry = _paper_geometry()
    small = tiling.auto_tile_size(geometry, 1e9, 4272.0, 3000.0)
    large = tiling.auto_tile_size(geometry, 4e9, 4272.0, 3000.0)
    assert 250 <= small < large
    for size in (small, large):
        assert (size - 250) % 16 == 0
    assert large**2 * 4272.0 + (large - 242) ** 2 * 3000.0 <= 4e9
    assert tiling.valid_tile_size(geometry, 300) == 298


def test_a_tile_below_the_smallest_is_an_error_naming_the_valid_sizes():
    from isl import errors

    with pytest.raises(errors.InputError, match=r"smallest tile .* \(250 px\).* 250, 266, 282"):
        tiling.valid_tile_size(_paper_geometry(), 100)
    with pytest.raises(errors.InputError, match=r"266 px"):
        tiling.valid_tile_size(_paper_geometry(), 250, plan="one")


def _geometry_24():
    import dataclasses

    return geometry_lib.geometry(dataclasses.replace(presets.get_preset("paper").model, output_size=24))


def test_a_24_px_model_needs_one_run_per_tile_with_16_px_blocks():
    geometry = _geometry_24()
    assert (geometry.input_size, geometry.phase) == (266, 16)
    assert tiling.block_size(geometry) == 16
    assert tiling.block_classes(geometry) == (0,)
    assert tiling.plan_tiles((1024, 1024), geometry).num_runs == 1
    # The first version's plan (24-px blocks edge to edge) needed two classes per axis.
    assert tiling.plan_tiles((1024, 1024), geometry, plan="output").num_runs == 4
    # 8-px models keep the exact 4-run plan; --phases=1 reads 16-px blocks from one run.
    assert tiling.plan_tiles((1024, 1024), _paper_geometry()).num_runs == 4
    assert tiling.plan_tiles((1024, 1024), _paper_geometry(), plan="one").num_runs == 1
    assert not tiling.is_exact(_paper_geometry(), "one") and tiling.is_exact(geometry, "one")


@pytest.mark.parametrize("plan_name", ["exact", "one"])
@pytest.mark.parametrize("length", [1, 17, 100, 1024])
@pytest.mark.parametrize("tile_size", [None, 266, 298, 700])
def test_one_class_plans_own_every_16_px_block_once(plan_name, length, tile_size):
    geometry = _geometry_24() if plan_name == "exact" else _paper_geometry()
    plan = tiling.plan_axis(length, geometry, tile_size, plan_name)
    assert plan.block == 16
    owned = sorted(block for run in plan.runs for block in run.blocks)
    assert owned == list(range(0, plan.grid_length, 16))
    assert plan.run_output_length == plan.run_input_length - 2 * geometry.border
    if tile_size is not None:
        assert plan.run_input_length <= tile_size
    for run in plan.runs:
        for block in run.blocks:
            assert (block - run.start) % 16 == 0
            assert block + 16 <= run.start + plan.run_output_length
