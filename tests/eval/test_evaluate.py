"""Tests for `isl.eval.evaluate` helpers (the CLI flow is in tests/cli/test_evaluate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from isl import errors
from isl.eval import evaluate


def test_region_mask_reads_the_convert_region_form_with_open_ends():
    predicted = {"row_offset": 0, "column_offset": 0, "height": 10, "width": 8}
    mask = evaluate.region_mask("6:,2:5", (10, 8), predicted)
    expected = np.zeros((10, 8), bool)
    expected[6:, 2:5] = True
    np.testing.assert_array_equal(mask, expected)
    with pytest.raises(errors.InputError, match="Or all, interior, original"):
        evaluate.region_mask("top", (10, 8), predicted)


def _patch_geometries():
    """The tiny preset, the paper model (8-px outputs) and a 24-px model (the shipped checkpoint's)."""
    import dataclasses

    from isl import presets
    from isl.model import geometry as geometry_lib

    paper = presets.get_preset("paper").model
    return {
        "tiny": geometry_lib.geometry(presets.get_preset("tiny").model),
        "paper": geometry_lib.geometry(paper),
        "24px": geometry_lib.geometry(dataclasses.replace(paper, output_size=24)),
    }


@pytest.mark.parametrize("name", ["tiny", "paper", "24px"])
@pytest.mark.parametrize("region,border_mode", [("interior", "valid"), ("original", "original")])
def test_interior_and_original_regions_are_the_border_modes_windows_of_the_model(name, region, border_mode):
    from isl.infer import predict as predict_lib
    from isl.model import geometry as geometry_lib

    geometry = _patch_geometries()[name]
    image_shape = (1024, 768) if name != "tiny" else (300, 203)
    recorded = geometry_lib.PatchGeometry.from_record(
        {"input_size": geometry.input_size, "output_size": geometry.output_size, "border": geometry.border,
         "phase": geometry.phase}
    )
    window = predict_lib.output_region(image_shape, geometry, border_mode)
    expected = np.zeros(image_shape, bool)
    expected[window.row_offset : window.row_offset + window.height,
             window.column_offset : window.column_offset + window.width] = True
    whole = {"row_offset": 0, "column_offset": 0, "height": image_shape[0], "width": image_shape[1]}
    np.testing.assert_array_equal(evaluate.region_mask(region, image_shape, whole, recorded), expected)


def test_the_24px_and_paper_original_windows_differ_so_the_geometry_matters():
    geometries = _patch_geometries()
    whole = {"row_offset": 0, "column_offset": 0, "height": 1024, "width": 768}
    paper = evaluate.region_mask("original", (1024, 768), whole, geometries["paper"])
    wide = evaluate.region_mask("original", (1024, 768), whole, geometries["24px"])
    assert paper.sum() == 768 * 512 and wide.sum() == 384 * 384  # The old fixed window: 768 x 512 for both.


def test_prediction_geometry_comes_from_the_record_else_the_model_config(tmp_path):
    from isl import presets
    from isl import config as config_lib

    recorded = {"geometry": {"input_size": 42, "output_size": 8, "border": 17, "phase": 4}}
    assert evaluate.prediction_geometry(recorded, str(tmp_path)).border == 17
    config_lib.save_config(presets.get_preset("tiny"), str(tmp_path / "config.json"))
    assert evaluate.prediction_geometry({"model": str(tmp_path)}, str(tmp_path)).input_size == 42
    with pytest.raises(errors.InputError, match="records no model geometry"):
        evaluate.prediction_geometry({"model": str(tmp_path / "gone")}, str(tmp_path))
    with pytest.raises(errors.InputError, match="without a border"):
        evaluate.prediction_geometry({"geometry": None}, str(tmp_path))
