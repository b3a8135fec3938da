"""The phase rule: the network is shift-equivariant by 2**(S-1) px, not by its output size."""

from __future__ import annotations

import numpy as np

from isl import presets
from isl.model import builder
from isl.model import geometry


def _phase_check(model, model_config, channels, seed):
    reference = geometry.reference_geometry(model_config)
    phase, size, out = reference.phase, reference.input_size, reference.output_size
    rng = np.random.default_rng(seed)
    big = rng.random((1, size + phase, size + phase, channels), dtype=np.float32)
    big_output = np.asarray(model(big, training=False))
    assert big_output.shape[1] == out + phase
    for row in (0, phase):
        for column in (0, phase):
            patch = big[:, row : row + size, column : column + size]
            patch_output = np.asarray(model(patch, training=False))
            np.testing.assert_allclose(
                big_output[:, row : row + out, column : column + out], patch_output, rtol=1e-4, atol=1e-4
            )
    # A shift by half the phase is not a symmetry of the network.
    half = phase // 2
    patch_output = np.asarray(model(big[:, half : half + size, half : half + size], training=False))
    assert not np.allclose(big_output[:, half : half + out, half : half + out], patch_output, rtol=1e-4, atol=1e-4)


def test_tiny_model_phase_rule(tiny_model, tiny_config):
    _phase_check(tiny_model, tiny_config.model, tiny_config.channels.num_input_features, seed=1)


def test_paper_model_phase_rule_266_px():
    config = presets.get_preset("paper")
    model = builder.build_model(config)
    _phase_check(model, config.model, config.channels.num_input_features, seed=2)
