"""The parser: decoded tensors -> patches and labels, with no record involved."""

from __future__ import annotations

import dataclasses

import numpy as np

from isl import presets
from isl.data import assemble
from isl.data import parser

TINY = presets.get_preset("tiny")


def test_patch_layout_follows_the_geometry():
    paper = parser.patch_layout(presets.get_preset("paper"))
    assert (paper.crop_size, paper.patch_size, paper.patch_stride, paper.output_size, paper.pad) == (
        520, 250, 256, 8, 121
    )
    tiny = parser.patch_layout(TINY)
    assert (tiny.crop_size, tiny.patch_size, tiny.output_size, tiny.pad) == (100, 42, 8, 17)
    larger = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, output_size=24))
    layout = parser.patch_layout(larger)
    assert layout.output_size == 24 and layout.patch_size == 58 and layout.crop_size == 58 + 58
    unpadded = dataclasses.replace(TINY, data=dataclasses.replace(TINY.data, pad_border=False))
    assert parser.patch_layout(unpadded).pad == 0


def test_selection_table_matches_the_python_z_mapping():
    table = parser.selection_table(30, 26)
    for count in (1, 13, 26, 30):
        values = np.arange(1, 31, dtype=np.float32)
        mapped = np.concatenate([values, [1.0]]) @ table[count]
        expected = [values[index] for index in assemble.z_slice_indices(count, 26)]
        assert mapped[0::2].tolist() == expected and mapped[1::2].tolist() == [1.0] * 26


def _decoded_well(height: int, width: int, num_z: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """What `decoder.decode` gives for a well with phase contrast and DAPI only, built by hand."""
    import tensorflow as tf

    inputs = rng.integers(0, 65536, (height, width, num_z), dtype=np.uint16)
    dapi = rng.integers(0, 65536, (height, width, 1), dtype=np.uint16)
    decoded = {
        "inputs": tf.constant(inputs),
        "input_max_value": tf.constant(65535.0),
        "modality": tf.constant("PHASE_CONTRAST"),
        "num_source_z": tf.constant(num_z),
        "targets": tf.constant(dapi),
        "target_channels": tf.constant(["DAPI_CONFOCAL"]),
        "target_max_values": tf.constant([65535.0]),
        "height": tf.constant(height),
        "width": tf.constant(width),
        "name": tf.constant("hand-made"),
    }
    return decoded, dapi[..., 0]


def test_the_parser_turns_a_decoded_well_into_patches_and_labels_at_their_place():
    import tensorflow as tf

    layout = parser.patch_layout(TINY)
    # 66 + 2 * 17 padding = one 100-px evaluation crop at (0, 0); patch (r, c) labels image rows r:r+8, columns c:c+8.
    decoded, dapi = _decoded_well(66, 66, 3, np.random.default_rng(0))
    well_parser = parser.Parser(TINY, layout, max_source_z=5)

    assert parser.eval_crop_offsets(66, 66, layout).numpy().tolist() == [[0, 0]]
    patches = well_parser.patches(decoded, tf.constant(0), tf.constant(0), tf.constant(False))
    assert patches["inputs"].shape == (4, 42, 42, 6)
    inputs, labels = well_parser.finish_batch(patches, tf.constant([0, 0], tf.int64), training=False)

    heads = TINY.channels.head_names
    assert inputs.shape == (4, 42, 42, 2 * TINY.channels.num_z_values) and labels.shape == (4, 8, 8, len(heads), 2)
    dapi_head, map2_head = heads.index("MAXPROJECT/DAPI_CONFOCAL"), heads.index("MAXPROJECT/MAP2_CONFOCAL")
    for index, (row, column) in enumerate(layout.patch_offsets):
        expected = dapi[row : row + 8, column : column + 8].astype(np.float32) / np.float32(65535)
        np.testing.assert_allclose(labels[index, ..., dapi_head, 0], expected, rtol=1e-6)
    assert np.all(labels[..., dapi_head, 1] == 1.0)
    assert np.all(labels[..., map2_head, :] == 0.0)  # Absent from the well: no value, no weight.

