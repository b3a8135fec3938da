"""`isl benchmark scaling`: seconds and peak memory of each command against image size.

For each image side (512, 1024, 2048, 4096 by default) a well is made by
mirroring the sample well (`mirror_well`: the sample reflected about its
edges, tiled, then cropped; every file of the sample, same names), converted,
and each command runs in its own child process, measured by that process's
peak RSS (`resource.getrusage(RUSAGE_CHILDREN)` after it exits: each command
runs in a fresh Python, so the figure is that command's own). The table
prints the CPU model and the load average before and after, because the
figures on a shared machine move with the other jobs.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from isl import errors


def mirror_well(sample_dir: str, output_dir: str, size: int) -> str:
    """Writes a `size` x `size` copy of the one well in `sample_dir`, mirrored, to `output_dir`.

    Every image of the sample (PNG or TIFF, 2-D) is reflected about its
    edges as often as needed (numpy's "symmetric" padding) and cropped to
    `size` x `size`; the file names are kept, so the result reads as the
    same well. Other files (a manifest) are copied.

    Returns:
        `output_dir`.

    Raises:
        InputError: when `sample_dir` holds no image or `size` < 1.
    """
    from isl.io import images

    if size < 1:
        raise errors.InputError(f"image side must be >= 1. Received: {size}")
    names = sorted(os.listdir(sample_dir)) if os.path.isdir(sample_dir) else []
    image_names = [name for name in names if images.is_image_path(os.path.join(sample_dir, name))]
    if not image_names:
        raise errors.InputError(f"{sample_dir}: no PNG or TIFF images to mirror.")
    os.makedirs(output_dir, exist_ok=True)
    for name in names:
        source = os.path.join(sample_dir, name)
        target = os.path.join(output_dir, name)
        if name not in image_names:
            if os.path.isfile(source):
                shutil.copyfile(source, target)
            continue
        plane = images.read_image(source)
        height, width = plane.shape
        mirrored = np.pad(plane, ((0, max(0, size - height)), (0, max(0, size - width))), mode="symmetric")
        images.write_image(target, np.ascontiguousarray(mirrored[:size, :size]))
    return output_dir
