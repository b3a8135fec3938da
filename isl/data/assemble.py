"""Faithful tensor assembly: z mapping, value/mask interleaving, targets (numpy).

The one owner of these rules (isl_reference.md §1.1, §3.3, §3.4):

* The network takes `num_z_values` z values `round(linspace(0, 1, n), 4)`.
  For a z value f and a stack of n source slices, the slice used is
  `round((n - 1) * f)` with Python's round-half-to-even. A 13-slice stack
  therefore gives each slice twice (0, 0, 1, 1, ..., 12, 12).
* Value and mask channels are interleaved z by z:
  `[z0 value, z0 mask, z1 value, z1 mask, ...]`, 2 * num_z_values channels.
* A missing label is a zero image with a zero mask. A synthetic channel
  (NEURITE_CONFOCAL) is the mean of its sources' values with mask
  `prod(masks) ** (1 / n)`, i.e. sqrt(m_MAP2 * m_NFH).

The tf.data pipeline applies the same rules in-graph and uses
`z_slice_indices` from here, so both paths agree value for value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from isl import config as config_lib


def z_values(num_z_values: int) -> tuple[float, ...]:
    """The network's z values, `round(linspace(0, 1, n), 4)` (owned by ChannelConfig)."""
    return config_lib.ChannelConfig(num_z_values=num_z_values).z_values


def z_slice_indices(num_source_z: int, num_z_values: int) -> tuple[int, ...]:
    """Source slice used for each network z value: `round((n - 1) * z)`.

    Args:
        num_source_z: n, the slices 0..n-1 present in the stack.
        num_z_values: the network's number of z values (26 in the paper).

    Returns:
        num_z_values indices in [0, n). Python's `round` rounds half to even,
        as the released code did.
    """
    if num_source_z < 1:
        raise ValueError(f"num_source_z must be >= 1. Received: {num_source_z}")
    return tuple(int(round((num_source_z - 1) * z)) for z in z_values(num_z_values))


def z_index_table(max_source_z: int, num_z_values: int) -> np.ndarray:
    """`[max_source_z + 1, num_z_values]` int32: row n is `z_slice_indices(n, ...)`.

    Row 0 is unused (zeros). The pipeline gathers from this table so its
    mapping is exactly the Python one.
    """
    table = np.zeros((max_source_z + 1, num_z_values), dtype=np.int32)
    for count in range(1, max_source_z + 1):
        table[count] = z_slice_indices(count, num_z_values)
    return table


def interleave_values_and_masks(values: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """`[..., Z]` values and masks -> `[..., 2Z]`, z-major, mask innermost."""
    if values.shape != masks.shape:
        raise ValueError(f"values {values.shape} and masks {masks.shape} differ in shape.")
    stacked = np.stack([values, masks], axis=-1)
    return stacked.reshape(values.shape[:-1] + (2 * values.shape[-1],))


def network_input(
    stack: np.ndarray, num_z_values: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """The network input of a transmitted-light stack.

    Args:
        stack: `[num_source_z, height, width]` float32 in [0, 1] (TRANSMISSION).
        num_z_values: number of network z values (26 in the paper).
        mask: optional `[height, width]` presence mask (1 where the pixel is
            real, 0 in padding); all ones by default.

    Returns:
        `[height, width, 2 * num_z_values]` float32:
        `[z0 value, z0 mask, z1 value, z1 mask, ...]`.
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim != 3:
        raise ValueError(f"stack must be [num_source_z, height, width]. Received shape: {stack.shape}")
    indices = z_slice_indices(stack.shape[0], num_z_values)
    values = np.moveaxis(stack[list(indices)], 0, -1)
    if mask is None:
        masks = np.ones_like(values)
    else:
        masks = np.broadcast_to(np.asarray(mask, np.float32)[..., None], values.shape)
    return interleave_values_and_masks(values, masks)


def synthetic_value_and_mask(
    values: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic channel from its sources: mean of values, geometric mean of masks."""
    count = len(values)
    value = np.sum(np.stack(values), axis=0, dtype=np.float32) / np.float32(count)
    product = np.prod(np.stack(masks), axis=0, dtype=np.float32)
    mask = np.sqrt(product) if count == 2 else product ** np.float32(1.0 / count)
    return value.astype(np.float32), mask.astype(np.float32)


def target_stack(
    well_targets: Mapping[str, np.ndarray],
    channels: config_lib.ChannelConfig,
    shape: tuple[int, int] | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Target values and masks in head order, synthetic channels included.

    Args:
        well_targets: channel name -> `[height, width]` float32 in [0, 1],
            the real fluorescence images present. Channels outside the
            vocabulary are ignored.
        channels: the vocabulary; the order is
            `channels.output_target_channels`.
        shape: (height, width), needed only when `well_targets` is empty.
        mask: optional `[height, width]` presence (0 in padding), multiplied
            into the mask of every present channel before synthetic channels
            are formed.

    Returns:
        (values, masks), each `[height, width, T]` float32 with
        T = len(channels.output_target_channels). A missing channel has zero
        value and zero mask.
    """
    if shape is None:
        if not well_targets:
            raise ValueError("target_stack needs `shape` when there are no targets.")
        shape = next(iter(well_targets.values())).shape
    height, width = shape
    per_channel: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    zeros = np.zeros((height, width), np.float32)
    present = np.ones((height, width), np.float32) if mask is None else np.asarray(mask, np.float32)
    for name in channels.target_channels:
        if name in well_targets:
            per_channel[name] = (np.asarray(well_targets[name], np.float32), present)
        else:
            per_channel[name] = (zeros, zeros)
    for synthetic in channels.active_synthetic_channels:
        per_channel[synthetic.name] = synthetic_value_and_mask(
            [per_channel[source][0] for source in synthetic.sources],
            [per_channel[source][1] for source in synthetic.sources],
        )
    names = channels.output_target_channels
    values = np.stack([per_channel[name][0] for name in names], axis=-1)
    masks = np.stack([per_channel[name][1] for name in names], axis=-1)
    return values, masks


def target_window(
    well_targets: Mapping[str, np.ndarray],
    channels: config_lib.ChannelConfig,
    shape: tuple[int, int],
    chosen: Sequence[str],
    window: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`target_stack` of the `chosen` target channels inside `window` (row0, row1, column0, column1; None: all).

    Returns:
        (values float32, masks bool), each `[row1 - row0, column1 - column0, len(chosen)]`;
        a mask is True where that channel has a real label.
    """
    values, masks = target_stack(well_targets, channels, shape=shape)
    if window is not None:
        row0, row1, column0, column1 = window
        values, masks = values[row0:row1, column0:column1], masks[row0:row1, column0:column1]
    columns = [channels.output_target_channels.index(channel) for channel in chosen]
    return values[..., columns], masks[..., columns] > 0


def training_labels(
    stack: np.ndarray,
    well_targets: Mapping[str, np.ndarray],
    channels: config_lib.ChannelConfig,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Labels for every head at every pixel (the numpy reference of the pipeline).

    Args:
        stack: `[num_source_z, height, width]` transmitted light.
        well_targets: channel -> `[height, width]` real targets present.
        channels: the vocabulary.
        mask: optional `[height, width]` presence (0 in padding) applied to
            the input and target masks.

    Returns:
        `[height, width, num_heads, 2]` float32: value and mask per head, in
        `channels.head_names` order.
    """
    height, width = stack.shape[1:]
    inputs = network_input(stack, channels.num_z_values, mask)
    input_labels = inputs.reshape(height, width, channels.num_z_values, 2)
    values, masks = target_stack(well_targets, channels, shape=(height, width), mask=mask)
    target_labels = np.stack([values, masks], axis=-1)
    return np.concatenate([input_labels, target_labels], axis=2).astype(np.float32)
