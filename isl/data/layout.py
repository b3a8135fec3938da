"""Where training and evaluation patches come from: `PatchLayout`, derived once from a config.

Kept free of TensorFlow (the parser in `isl.data.parser` uses it inside tf.data), so the crop, patch, output
sizes and padding have one owner.
"""

from __future__ import annotations

import dataclasses

from isl import config as config_lib
from isl import errors
from isl.model import geometry as geometry_lib


@dataclasses.dataclass(frozen=True)
class PatchLayout:
    """Where patches come from, derived from the config and the network geometry.

    Attributes:
        crop_size: side of each crop (520 in the paper).
        patch_size: network input side P (250 in the paper).
        patch_stride: offset between the 2 x 2 patches of a crop (256).
        output_size: network output side O (8); the label patch side.
        border: (P - O) / 2 (121).
        pad: zero padding added around each image (border, or 0).
    """

    crop_size: int
    patch_size: int
    patch_stride: int
    output_size: int
    border: int
    pad: int

    @property
    def patch_offsets(self) -> tuple[tuple[int, int], ...]:
        """(row, column) of the patches inside a crop."""
        stride = self.patch_stride
        return ((0, 0), (0, stride), (stride, 0), (stride, stride))

    @property
    def patches_per_crop(self) -> int:
        return len(self.patch_offsets)


def patch_layout(config: config_lib.ExperimentConfig) -> PatchLayout:
    """The patch layout for a config.

    Raises:
        InputError: when the model geometry is invalid for its output size.
    """
    try:
        geometry = geometry_lib.geometry(config.model)
    except ValueError as error:
        raise errors.InputError(f"model geometry: {error}") from None
    stride = config.data.patch_stride
    crop = max(config.data.crop_size, stride + geometry.input_size)
    return PatchLayout(
        crop_size=crop,
        patch_size=geometry.input_size,
        patch_stride=stride,
        output_size=geometry.output_size,
        border=geometry.border,
        pad=geometry.border if config.data.pad_border else 0,
    )
