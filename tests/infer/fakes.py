"""Fake networks that obey the model contract, for tiling and stitching tests.

A fake maps `[batch, H, W, 2Z]` to `[batch, H - 2b, W - 2b, ...]`. The
"phase" fake averages aligned `phase x phase` blocks of the input (aligned to
the input's own origin, like a stride-2 tower), so it is shift-equivariant by
`phase` pixels only: a dense run equals the patch-wise reference only when
the phase classes are handled right.
"""

from __future__ import annotations

import numpy as np

from isl.model import geometry as geometry_lib


def fake_geometry(output_size: int, border: int, phase: int) -> geometry_lib.Geometry:
    """A Geometry for a fake network (no towers)."""
    return geometry_lib.Geometry(
        input_size=output_size + 2 * border,
        output_size=output_size,
        border=border,
        phase=phase,
        merge_size=output_size,
        towers=(),
    )


def identity_plus_constant(border: int, constant: float = 0.42):
    """run_function: the centre crop of the value channels plus a constant."""

    def run(inputs, keep_rows, keep_columns):
        inputs = np.asarray(inputs)
        crop = inputs[:, border : inputs.shape[1] - border, border : inputs.shape[2] - border, 0::2]
        return {"value": (crop + constant)[:, keep_rows][:, :, keep_columns]}

    return run


def phase_averaging(border: int, phase: int):
    """run_function: mean of each aligned phase x phase block, then crop.

    Blocks are aligned to the input origin, so shifting the input by a
    multiple of `phase` shifts the output; any other shift changes it.
    """

    def run(inputs, keep_rows, keep_columns):
        inputs = np.asarray(inputs, dtype=np.float64)
        batch, height, width, depth = inputs.shape
        if height % phase or width % phase:
            raise ValueError(f"input {height}x{width} is not a multiple of the phase {phase}")
        blocks = inputs.reshape(batch, height // phase, phase, width // phase, phase, depth).mean(axis=(2, 4))
        upsampled = np.repeat(np.repeat(blocks, phase, axis=1), phase, axis=2)
        # Mix in the raw pixel so every output pixel differs.
        mixed = upsampled + 0.1 * inputs
        cropped = mixed[:, border : height - border, border : width - border, 0::2].astype(np.float32)
        return {"value": cropped[:, keep_rows][:, :, keep_columns]}

    return run


def stack_input(stack: np.ndarray) -> np.ndarray:
    """network_input_fn for fakes: value/mask interleaved per source slice."""
    values = np.moveaxis(stack, 0, -1)
    return np.stack([values, np.ones_like(values)], axis=-1).reshape(values.shape[:2] + (-1,))
