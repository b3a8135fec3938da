"""In-graph tile plan: equal to `tiling.plan_axis` (the `predict_image` parity test is in test_export.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from isl import presets
from isl.infer import image_graph
from isl.infer import predict as predict_lib
from isl.infer import tiling
from isl.model import geometry as geometry_lib


def _geometries():
    tiny = presets.get_preset("tiny")
    paper = presets.get_preset("condition_b")
    paper24 = dataclasses.replace(paper.model, output_size=24)
    return [geometry_lib.geometry(tiny.model), geometry_lib.geometry(paper.model), geometry_lib.geometry(paper24)]


@pytest.mark.parametrize("geometry", _geometries(), ids=["tiny", "paper", "paper_24px"])
def test_in_graph_plan_equals_the_python_planner(geometry):
    tiles = (None, geometry.input_size, geometry.input_size + geometry.phase, geometry.input_size + 5 * geometry.phase)
    for tile_size in tiles:
        for length in list(range(1, 70, 3)) + [250, 767, 1024]:
            expected = tiling.plan_axis(length, geometry, tile_size, plan=image_graph.GRAPH_PLAN)
            actual = image_graph.axis_plan(tf.constant(length), geometry, tile_size)
            assert [run.start for run in expected.runs] == actual["starts"].numpy().tolist(), (tile_size, length)
            assert int(actual["run_input_length"]) == expected.run_input_length
            run_of, position = actual["run_of"].numpy(), actual["position"].numpy()
            out = geometry.output_size
            for pixel in range(length):
                block = pixel - pixel % out
                (index,) = [i for i, run in enumerate(expected.runs) if block in run.blocks]
                assert run_of[pixel] == index
                assert position[pixel] == expected.runs[index].blocks.index(block) * out + pixel - block


def test_reflect_indices_equal_numpy():
    for length in (1, 2, 5):
        indices = np.arange(-13, 20, dtype=np.int32)
        np.testing.assert_array_equal(image_graph.reflect_indices(tf.constant(indices), tf.constant(length)).numpy(),
                                      predict_lib.reflect_indices(indices, length))
