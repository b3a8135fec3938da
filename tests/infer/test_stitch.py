"""Stitching with fake networks: exact recovery, phase classes, tiles, regions."""

from __future__ import annotations

import numpy as np
import pytest

from isl import errors
from isl.infer import predict
from isl.infer import stitch
from isl.infer import tiling
from tests.infer import fakes


def _stack(num_z: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(1).random((num_z, height, width), dtype=np.float32)


@pytest.mark.parametrize("shape", [(37, 50), (16, 16), (5, 3)])
@pytest.mark.parametrize("tile_size", [None, 22])
def test_identity_plus_constant_recovers_the_input_exactly(shape, tile_size):
    geometry = fakes.fake_geometry(output_size=2, border=3, phase=4)
    stack = _stack(2, *shape)
    result = predict.predict_image(
        None,
        stack,
        geometry,
        num_z_values=2,
        statistics=(),
        tile_size=tile_size,
        network_input_fn=fakes.stack_input,
        run_function=fakes.identity_plus_constant(geometry.border),
    )
    expected = np.moveaxis(stack, 0, -1) + 0.42
    np.testing.assert_array_equal(result.statistics["value"], expected.astype(np.float32))
    assert result.region == predict.OutputRegion(0, 0, *shape)


def test_valid_border_gives_the_interior_on_the_block_grid():
    geometry = fakes.fake_geometry(output_size=2, border=3, phase=4)
    stack = _stack(1, 20, 17)
    result = predict.predict_image(
        None,
        stack,
        geometry,
        num_z_values=1,
        statistics=(),
        border_mode="valid",
        network_input_fn=fakes.stack_input,
        run_function=fakes.identity_plus_constant(geometry.border, 0.0),
    )
    assert result.region == predict.OutputRegion(3, 3, 14, 10)
    np.testing.assert_array_equal(result.statistics["value"][..., 0], stack[0, 3:17, 3:13])


def test_original_border_reproduces_the_released_window():
    from isl import presets
    from isl.model import geometry as geometry_lib

    geometry = geometry_lib.geometry(presets.get_preset("paper").model)
    assert predict.output_region((1500, 1500), geometry, "original") == predict.OutputRegion(121, 121, 1152, 1152)
    assert predict.output_region((1024, 1024), geometry, "original").height == 768
    with pytest.raises(errors.InputError, match="too small"):
        predict.output_region((200, 300), geometry, "valid")


@pytest.mark.parametrize("output_size,border,phase", [(2, 5, 4), (8, 6, 4), (4, 6, 16), (8, 4, 16)])
@pytest.mark.parametrize("tile_size", [None, 28])
def test_dense_runs_equal_the_patchwise_reference_for_a_phase_sensitive_fake(output_size, border, phase, tile_size):
    geometry = fakes.fake_geometry(output_size=output_size, border=border, phase=phase)
    if (geometry.input_size % phase) or (tile_size is not None and (tile_size - geometry.input_size) % phase):
        tile_size = None
    stack = _stack(2, 29, 41)
    run = fakes.phase_averaging(border, phase)
    dense = predict.predict_image(
        None, stack, geometry, num_z_values=2, statistics=(), tile_size=tile_size,
        network_input_fn=fakes.stack_input, run_function=run,
    )
    reference = predict.predict_patchwise(
        None, stack, geometry, num_z_values=2, statistics=(), network_input_fn=fakes.stack_input, run_function=run,
    )
    np.testing.assert_allclose(dense.statistics["value"], reference["value"], atol=1e-6)


def test_a_single_class_plan_is_wrong_for_a_phase_sensitive_fake():
    """Guards the test above: ignoring the 8-px class really changes pixels."""
    border, phase = 5, 4
    geometry = fakes.fake_geometry(output_size=2, border=border, phase=phase)
    stack = _stack(1, 26, 26)
    run = fakes.phase_averaging(border, phase)
    reference = predict.predict_patchwise(
        None, stack, geometry, num_z_values=1, statistics=(), network_input_fn=fakes.stack_input, run_function=run,
    )
    padded = predict.padded_stack(stack, predict.OutputRegion(0, 0, 26, 26), tiling.plan_tiles((26, 26), geometry))
    everything = np.arange(26)
    naive = run(fakes.stack_input(padded[:, : 26 + 2 * border, : 26 + 2 * border])[np.newaxis], everything, everything)
    naive = naive["value"][0]
    assert np.abs(naive - reference["value"]).max() > 1e-3


def test_stitcher_rejects_an_incomplete_plan_and_short_runs():
    geometry = fakes.fake_geometry(output_size=2, border=1, phase=4)
    plan = tiling.plan_tiles((6, 6), geometry)
    stitcher = stitch.Stitcher(plan, ())
    row, column = next(iter(plan.runs()))
    with pytest.raises(ValueError, match="does not cover"):
        stitcher.add(row, column, np.zeros((1, 1), np.float32))
    stitcher.add(row, column, np.zeros(plan.run_output_shape, np.float32))
    with pytest.raises(ValueError, match="never written"):
        stitcher.result()


def test_reflect_indices_match_numpy_reflect_padding_even_beyond_the_image():
    image = np.arange(5)
    indices = np.arange(-12, 17)
    expected = np.pad(image, (12, 12), mode="reflect")[: len(indices)]
    np.testing.assert_array_equal(image[predict.reflect_indices(indices, 5)], expected)
