"""Output heads: one per (z, channel) of the vocabulary (isl_reference.md §1.7).

Each head is a batch norm -> [ReLU || tanh] -> 1x1 convolution with bias to
`num_classes` logits, applied to the shared embedding. Heads are stacked into
`[batch, rows, columns, num_heads, num_classes]` (float32) in
`ChannelConfig.head_names` order.

Layer names are stable across versions: the head `0.04/TRANSMISSION` (TF1
scope `head/0.04/TRANSMISSION/residual_v2_conv`) is the layers
`head_0.04_TRANSMISSION_bn`, `..._act`, `..._conv`.
"""

from __future__ import annotations

import keras

from isl import config as config_lib
from isl.model import blocks
from isl.model import layers as isl_layers

LOGITS_LAYER = "logits"
HEAD_PREFIX = "head_"


def head_layer_name(head_name: str) -> str:
    """`0.04/TRANSMISSION` -> `head_0.04_TRANSMISSION` (Keras 3 forbids "/")."""
    return HEAD_PREFIX + head_name.replace("/", "_")


def add_heads(
    embedding: keras.KerasTensor,
    channels: config_lib.ChannelConfig,
    num_classes: int,
    settings: blocks.BlockSettings,
) -> keras.KerasTensor:
    """Builds every head on `embedding` and stacks their logits.

    Args:
        embedding: `[batch, n, n, E]`.
        channels: the vocabulary; one head per `channels.head_names` entry.
        num_classes: bins per distribution (256).
        settings: batch-norm constants and dtype policy.

    Returns:
        `[batch, n, n, num_heads, num_classes]` float32 logits.
    """
    logits = [
        blocks.head(embedding, num_classes=num_classes, settings=settings, name=head_layer_name(name))
        for name in channels.head_names
    ]
    return isl_layers.StackHeads(name=LOGITS_LAYER, dtype="float32")(logits)
