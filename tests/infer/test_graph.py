"""The inference graph (batch norm folded into the activation) gives the same outputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from isl import presets
from isl.infer import graph
from isl.model import builder


def _model(precision: str):
    config = presets.get_preset("tiny")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=precision))
    model = builder.build_model(config)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # Trained-looking statistics, so the fold is not the identity.
        if hasattr(layer, "moving_variance"):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape) * 0.3)
            layer.moving_variance.assign(rng.uniform(0.3, 3.0, size=layer.moving_variance.shape))
            layer.gamma.assign(rng.uniform(0.5, 2.0, size=layer.gamma.shape))
            layer.beta.assign(rng.normal(size=layer.beta.shape) * 0.3)
    return config, model


# Stated tolerances on the logits: float32 1e-4 (rounding order only); bfloat16
# 0.25 absolute (bfloat16 keeps 8 significant bits; the fold rounds once where
# the original rounds after batch norm and again after the activation).
@pytest.mark.parametrize(
    "precision, tolerance", [("", 1e-4), pytest.param("bfloat16", 0.25, marks=pytest.mark.slow)]
)
def test_folded_graph_matches_the_trained_graph(precision, tolerance):
    config, model = _model(precision)
    folded = graph.inference_model(model)
    folded_layers = [layer for layer in folded.layers if isinstance(layer, graph.FoldedNormActivation)]
    batch_norms = [layer for layer in model.layers if hasattr(layer, "moving_variance")]
    assert len(folded_layers) == len(batch_norms) > 10
    assert folded.get_layer(builder.EMBEDDING_LAYER) is not None
    inputs = np.random.default_rng(1).random((1, 42, 42, 2 * config.channels.num_z_values), dtype=np.float32)
    expected = np.asarray(model(inputs, training=False), np.float32)
    got = np.asarray(folded(inputs, training=False), np.float32)
    assert got.shape == expected.shape == (1, 8, 8, config.channels.num_heads, 256)
    assert np.abs(got - expected).max() <= tolerance
    # The distributions' medians agree almost everywhere.
    assert np.mean(np.argmax(got, -1) == np.argmax(expected, -1)) > (0.999 if not precision else 0.9)
