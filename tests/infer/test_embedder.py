"""The frozen core's tiled embedding (`isl.infer.embedder`), which a read-out maps to its targets."""

from __future__ import annotations

import numpy as np
import pytest

from isl import errors
from isl.infer import embedder as embedder_lib


def test_tiles_join_without_seams(tiny_config, tiny_model, monkeypatch):
    """Tiles start on multiples of the shift period: a tiled embedding equals one run over the whole image."""
    from isl.data import assemble

    stack = np.random.default_rng(3).uniform(size=(5, 37, 45)).astype(np.float32)
    monkeypatch.setattr(embedder_lib, "TILE_OUTPUT", 16)
    tiled = embedder_lib.Embedder(tiny_model, tiny_config)
    assert tiled.stride % 4 == 0 and tiled.num_tiles((37, 45)) > 4
    ticks = []
    embedding = tiled(stack, lambda: ticks.append(1))
    assert embedding.shape == (37, 45, tiled.embedding_size) and len(ticks) == tiled.num_tiles((37, 45))
    monkeypatch.setattr(embedder_lib, "TILE_OUTPUT", 64)
    whole = embedder_lib.Embedder(tiny_model, tiny_config)
    assert whole.num_tiles((37, 45)) == 1
    np.testing.assert_allclose(embedding, whole(stack), atol=1e-4)
    # And both equal the core run on the reflect-padded image directly.
    border = whole.border
    padded = np.pad(stack, ((0, 0), (border, border + 64 - 37), (border, border + 64 - 45)), mode="reflect")
    direct = np.asarray(whole.core(assemble.network_input(padded, tiny_config.channels.num_z_values)[None]))[0]
    np.testing.assert_allclose(embedding, direct[:37, :45], atol=1e-4)


def test_the_regression_unet_has_no_core_to_read_out():
    from isl import config as config_lib
    from isl import presets

    config = config_lib.apply_overrides(presets.get_preset("tiny"), ["model.architecture=unet_regression"])
    with pytest.raises(errors.InputError, match="U-Net regression"):
        embedder_lib.Embedder(None, config)


def test_a_window_crop_gives_the_whole_images_embedding_there(tiny_config, tiny_model):
    """Issue 27 (`--region` for read-outs): the core run on `crop_for`'s crop equals the whole image's run on the
    window and `radius` pixels around it, also when the window lies inside the image on both axes."""
    stack = np.random.default_rng(4).uniform(size=(5, 90, 97)).astype(np.float32)
    embedder = embedder_lib.Embedder(tiny_model, tiny_config)
    whole = embedder(stack)
    window, radius = (41, 52, 45, 60), 2
    top, bottom, left, right = embedder.crop_for((90, 97), window, radius)
    assert top > 0 and left > 0 and bottom < 90 and right < 97  # A real crop on every side.
    assert top % embedder.phase == 0 and left % embedder.phase == 0
    crop = embedder(stack[:, top:bottom, left:right])
    row0, row1, column0, column1 = window[0] - radius, window[1] + radius, window[2] - radius, window[3] + radius
    # Float rounding only: the core's convolutions run on other input sizes (oneDNN picks other kernels), and the
    # untrained weights (Keras initialises them unseeded) give values up to ~6, so 1e-4 absolute alone was flaky.
    np.testing.assert_allclose(crop[row0 - top : row1 - top, column0 - left : column1 - left],
                               whole[row0:row1, column0:column1], rtol=1e-3, atol=1e-4)
    # Off the shift-period grid the same crop would not match: the alignment matters.
    shifted = embedder(stack[:, top + 1 : bottom, left:right])
    assert not np.allclose(shifted[row0 - top - 1 : row1 - top - 1, column0 - left : column1 - left],
                           whole[row0:row1, column0:column1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("band_rows, start, stop", [(3, 0, 37), (7, 5, 30), (40, 0, 37), (1, 36, 37)])
def test_bands_hold_the_rows_each_band_needs_and_no_more(tiny_config, tiny_model, monkeypatch, band_rows, start,
                                                         stop):
    """`Embedder.bands`: every band's rows and `radius` around them (reflected at the edges) are the whole
    embedding's, the bands cover [start, stop) in order, and the buffer never holds more than a row of tiles and
    one band's carry (so memory does not grow with the height)."""
    from isl.model import readout as readout_lib

    stack = np.random.default_rng(5).uniform(size=(5, 37, 45)).astype(np.float32)
    monkeypatch.setattr(embedder_lib, "TILE_OUTPUT", 8)
    embedder = embedder_lib.Embedder(tiny_model, tiny_config)
    assert embedder.stride < 37 / 3  # Several rows of tiles.
    whole = embedder(stack)
    radius, covered, ticks = 2, [], []
    for embedding, first, row0, row1 in embedder.bands(stack, radius, band_rows, start, stop,
                                                       lambda: ticks.append(1)):
        assert len(embedding) <= embedder.stride + band_rows + 2 * radius - 1
        assert 0 < row1 - row0 <= band_rows
        needed = readout_lib.pad_index(np.arange(row0 - radius, row1 + radius), 37, "reflect")
        assert needed.min() >= first and needed.max() < first + len(embedding)
        np.testing.assert_allclose(embedding[needed - first], whole[needed], atol=1e-5)
        covered.append((row0, row1))
    assert covered[0][0] == start and covered[-1][1] == stop
    assert all(previous[1] == following[0] for previous, following in zip(covered, covered[1:]))
    assert len(ticks) <= embedder.num_tiles((37, 45))
