"""Larger test wells made by mirroring a real one (`isl.benchmarks` memory-scaling runs; NumPy only).

`mirror_well(source, target, (height, width))` writes every image of a well
folder (PNG or TIFF, same file names, same pixel type) mirrored out to the
given size: the image, its mirror image, the image again and so on along each
axis (`numpy.pad(mode="reflect")` as often as needed), so a 1024 x 768
sample becomes a 2048^2 or 4096^2 well with the sample's statistics and no
seams the network has not seen at a border. Other files are not copied.
"""

from __future__ import annotations

import os

import numpy as np

from isl import errors


def mirrored(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`[h, w]` -> `[height, width]` by mirror reflection (the edge pixel not repeated)."""
    from isl.infer import predict

    image = np.asarray(image)
    rows = predict.reflect_indices(np.arange(height), image.shape[0])
    columns = predict.reflect_indices(np.arange(width), image.shape[1])
    return image[rows][:, columns]


def mirror_well(source: str, target: str, size: tuple[int, int]) -> list[str]:
    """Writes the images of well folder `source` mirrored to `size` = (height, width) into `target`.

    Returns:
        The file names written.

    Raises:
        InputError: when `source` holds no image or `size` is not positive.
    """
    from isl.io import images

    height, width = (int(value) for value in size)
    if height < 1 or width < 1:
        raise errors.InputError(f"A mirrored well needs a positive size. Received: {height} x {width}")
    names = sorted(name for name in os.listdir(source) if images.is_image_path(name))
    if not names:
        raise errors.InputError(f"{source}: no image to mirror.")
    os.makedirs(target, exist_ok=True)
    for name in names:
        pages = images.read_pages(os.path.join(source, name)) if name.lower().endswith((".tif", ".tiff")) else None
        if pages is not None and pages.shape[0] > 1:
            result = np.stack([mirrored(page, height, width) for page in pages])
        else:
            result = mirrored(images.read_image(os.path.join(source, name)), height, width)
        images.write_image(os.path.join(target, name), result)
    return names
