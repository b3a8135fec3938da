"""Modelled peak memory of a training step, from measurements.

Peak RSS of one training step of the concordance network (forward, loss,
backward, Adam update) is modelled as

    base + batch * (input_pixels * per_input_pixel + output_pixels * heads * classes * per_logit)

with constants fitted to `isl benchmark model` runs of the paper model in
bfloat16 with the speed options (BUILD_NOTES.md, "Issue 12"): 4.7 GB at 8-px
outputs and batch 16, 6.2 GB at 24 px and batch 16, 11.0 GB at 120 px and
batch 4; and, by least squares on the relative error, to five float32 runs:
the paper preset (35 heads) at 56-px outputs and batch 11 (18.9 GiB) and
120 px, batch 3 (16.2 GiB); condition_b (30 heads) at 8 px, batch 16 (7.8
GiB), 24 px, batch 13 (10.1 GiB) and 248 px, batch 1 (22.8 GiB). The
per-input-pixel activations scale with `model.base_depth`; in float32 (which
also runs without the fused kernels) they are 2.3x larger and each logit
costs 39.0 bytes instead of 17.7 (the logits, their softmax and gradients
dominate wide outputs). It is an estimate (within about 15% of those
measurements) for sizing batches, not a bound.
"""

from __future__ import annotations

from isl import config as config_lib
from isl.model import geometry as geometry_lib

BASE_BYTES = 1.63e9
BYTES_PER_INPUT_PIXEL_BFLOAT16 = 2.93e3
FLOAT32_ACTIVATION_FACTOR = 2.3
BYTES_PER_LOGIT = 17.7
BYTES_PER_LOGIT_FLOAT32 = 39.0
PAPER_BASE_DEPTH = 400


def training_step_bytes(config: config_lib.ExperimentConfig, batch_size: int | None = None) -> float:
    """Modelled peak RSS in bytes of one training step of `config` at `batch_size`."""
    batch_size = config.train.batch_size if batch_size is None else batch_size
    geometry = geometry_lib.geometry(config.model)
    per_input = BYTES_PER_INPUT_PIXEL_BFLOAT16 * max(config.model.base_depth / PAPER_BASE_DEPTH, 0.01)
    per_logit = BYTES_PER_LOGIT
    if not config.train.mixed_precision:
        per_input *= FLOAT32_ACTIVATION_FACTOR
        per_logit = BYTES_PER_LOGIT_FLOAT32
    logits = geometry.output_size**2 * config.channels.num_heads * config.model.num_classes
    return BASE_BYTES + batch_size * (geometry.input_size**2 * per_input + logits * per_logit)


def largest_batch(config: config_lib.ExperimentConfig, budget_bytes: float, limit: int | None = None) -> int:
    """The largest batch (at most `limit`, default the config's) whose modelled step fits `budget_bytes`; 0 if none."""
    limit = config.train.batch_size if limit is None else limit
    for batch_size in range(limit, 0, -1):
        if training_step_bytes(config, batch_size) <= budget_bytes:
            return batch_size
    return 0
