"""A small, learnable synthetic dataset in the lab's file naming (numpy only).

Each well is a scene of neurons: somas with nuclei, short thick dendrites
(MAP2) and long thin axons (NFH), drawn as random smooth curves. From the
same scene it renders

* a phase-contrast-like z-stack: in focus, cells are dark with a bright halo;
  out of focus they blur and a defocus term proportional to the Laplacian of
  the optical thickness changes sign from one side of focus to the other, so
  depth carries information (as in real transmitted light);
* DAPI (nuclei), MAP2 (somas + dendrites) and NFH (axons + somas) confocal
  maximum projections, so the labels are learnable from the stack; on request
  also the other labels of the paper's conditions (`ALL_TARGETS`): DAPI and
  TuJ1 (whole neurons) wide field, Islet1 (the nuclei of every third cell,
  "motor neurons"), a dead-cell stain (the nuclei of every fourth cell) and
  CellMask (cell outlines), so every condition preset can be exercised.

Intensities are normalised like the released data (§3.4, §7): every
transmitted-light slice to mean 0.5, std 0.11, clipped to [0, 1]; confocal
background about 0.2. Files are 16-bit PNG, one folder per well.
"""

from __future__ import annotations

import os

import numpy as np

from isl.io import filenames
from isl.io import images

LAB = "SYNTHETIC"
CONDITION = "NEURONS_0_1"
MODALITY = "PHASE_CONTRAST"
TARGETS = ("DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL")
ALL_TARGETS = TARGETS + (
    "DAPI_WIDEFIELD", "TUJ1_WIDEFIELD", "ISLET_WIDEFIELD", "DEAD_CONFOCAL", "CELLMASK_CONFOCAL"
)
MODALITIES = ("BRIGHTFIELD", "PHASE_CONTRAST", "DIC")


def _frequencies(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Squared radial frequency (cycles/pixel)^2 for rfft2 arrays, and its sqrt."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    squared = fy**2 + fx**2
    return squared, np.sqrt(squared)


def _gaussian(squared: np.ndarray, sigma: float) -> np.ndarray:
    """Transfer function of a Gaussian blur of `sigma` pixels."""
    return np.exp(-2.0 * (np.pi * sigma) ** 2 * squared)


def _curve(rng: np.random.Generator, start: np.ndarray, angle: float, length: int, wiggle: float) -> np.ndarray:
    """Points (row, column) of a smooth random curve, one per pixel of length."""
    turns = np.cumsum(rng.normal(0.0, wiggle, length))
    turns = np.convolve(turns, np.ones(9) / 9, mode="same")
    angles = angle + turns
    steps = np.stack([np.sin(angles), np.cos(angles)], axis=1)
    return start + np.cumsum(steps, axis=0)


def _splat(image: np.ndarray, points: np.ndarray, weight: float) -> None:
    """Adds `weight` at each point (nearest pixel), ignoring points outside."""
    rows = np.round(points[:, 0]).astype(int)
    columns = np.round(points[:, 1]).astype(int)
    inside = (rows >= 0) & (rows < image.shape[0]) & (columns >= 0) & (columns < image.shape[1])
    np.add.at(image, (rows[inside], columns[inside]), weight)


def _disk(image: np.ndarray, centre: np.ndarray, radius: float, weight: float) -> None:
    """Adds a smooth-edged disk (super-Gaussian profile)."""
    reach = int(np.ceil(radius * 1.6))
    row, column = int(round(centre[0])), int(round(centre[1]))
    r0, r1 = max(row - reach, 0), min(row + reach + 1, image.shape[0])
    c0, c1 = max(column - reach, 0), min(column + reach + 1, image.shape[1])
    if r0 >= r1 or c0 >= c1:
        return
    rows = np.arange(r0, r1)[:, None] - centre[0]
    columns = np.arange(c0, c1)[None, :] - centre[1]
    distance = np.sqrt(rows**2 + columns**2) / radius
    image[r0:r1, c0:c1] += weight * np.exp(-(distance**4))


def render_scene(
    height: int, width: int, num_z: int, rng: np.random.Generator, targets: tuple[str, ...] = TARGETS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Renders one well with the requested target channels (names of `ALL_TARGETS`).

    Returns:
        (stack `[num_z, height, width]` float32 in [0, 1],
         targets channel -> `[height, width]` float32 in [0, 1]).
    """
    somas = np.zeros((height, width), np.float32)
    nuclei = np.zeros((height, width), np.float32)
    dendrites = np.zeros((height, width), np.float32)
    axons = np.zeros((height, width), np.float32)
    # Subsets chosen by the cell's index, so the random stream (and every
    # image above) does not depend on which labels are requested.
    motor_nuclei = np.zeros((height, width), np.float32)
    dead_nuclei = np.zeros((height, width), np.float32)
    num_cells = max(3, int(round(height * width / 9000 * rng.uniform(0.7, 1.3))))
    for cell in range(num_cells):
        centre = rng.uniform([0, 0], [height, width])
        radius = rng.uniform(7.0, 12.0)
        _disk(somas, centre, radius, 1.0)
        nucleus_centre = centre + rng.normal(0, 1.0, 2)
        nucleus_radius = radius * rng.uniform(0.5, 0.65)
        _disk(nuclei, nucleus_centre, nucleus_radius, 1.0)
        if cell % 3 == 0:
            _disk(motor_nuclei, nucleus_centre, nucleus_radius, 1.0)
        if cell % 4 == 1:
            _disk(dead_nuclei, nucleus_centre, nucleus_radius, 1.0)
        for _ in range(rng.integers(2, 5)):
            angle = rng.uniform(0, 2 * np.pi)
            start = centre + radius * np.array([np.sin(angle), np.cos(angle)])
            _splat(dendrites, _curve(rng, start, angle, int(rng.uniform(25, 70)), 0.08), 1.0)
        angle = rng.uniform(0, 2 * np.pi)
        start = centre + radius * np.array([np.sin(angle), np.cos(angle)])
        _splat(axons, _curve(rng, start, angle, int(rng.uniform(150, 400)), 0.03), 1.0)
    squared, _ = _frequencies(height, width)
    spectra = {name: np.fft.rfft2(image) for name, image in
               (("somas", somas), ("nuclei", nuclei), ("dendrites", dendrites), ("axons", axons))}
    spectra["dendrites"] *= _gaussian(squared, 1.3) * 4.0
    spectra["axons"] *= _gaussian(squared, 0.7) * 2.0

    # Optical thickness (phase) of the scene.
    thickness = spectra["somas"] + 0.6 * spectra["nuclei"] + 0.5 * spectra["dendrites"] + 0.35 * spectra["axons"]
    halo = _gaussian(squared, 6.0)
    laplacian = -4.0 * np.pi**2 * squared * _gaussian(squared, 1.5)
    stack = np.empty((num_z, height, width), np.float32)
    focus = rng.uniform(0.4, 0.6) * (num_z - 1)
    span = max(num_z - 1, 1) / 2.0
    for z in range(num_z):
        defocus = (z - focus) / span  # about -1..1
        blur = _gaussian(squared, 0.6 + 3.0 * abs(defocus))
        in_focus = -(1.0 - 0.6 * halo) * thickness * blur * (1.0 - 0.5 * abs(defocus))
        spectrum = in_focus + 6.0 * defocus * laplacian * thickness
        plane = np.fft.irfft2(spectrum, s=(height, width))
        plane += rng.normal(0.0, 0.02 * (plane.std() + 1e-6), plane.shape)
        stack[z] = _normalise(plane, mean=0.5, std=0.11)

    def fluorescence(spectrum: np.ndarray, sigma: float, gain: float) -> np.ndarray:
        image = np.fft.irfft2(spectrum * _gaussian(squared, sigma), s=(height, width))
        image = 0.2 + gain * image / max(float(np.percentile(image, 99.7)), 1e-6)
        image += rng.normal(0.0, 0.01, image.shape)
        return np.clip(image, 0.0, 1.0).astype(np.float32)

    renderers = {
        "DAPI_CONFOCAL": lambda: fluorescence(spectra["nuclei"], 1.0, 0.6),
        "MAP2_CONFOCAL": lambda: fluorescence(0.7 * spectra["somas"] + spectra["dendrites"], 1.0, 0.55),
        "NFH_CONFOCAL": lambda: fluorescence(0.4 * spectra["somas"] + spectra["axons"], 0.8, 0.55),
        "DAPI_WIDEFIELD": lambda: fluorescence(spectra["nuclei"], 2.5, 0.6),
        "TUJ1_WIDEFIELD": lambda: fluorescence(
            spectra["somas"] + 0.8 * spectra["dendrites"] + spectra["axons"], 2.0, 0.55),
        "ISLET_WIDEFIELD": lambda: fluorescence(np.fft.rfft2(motor_nuclei), 2.5, 0.6),
        "DEAD_CONFOCAL": lambda: fluorescence(np.fft.rfft2(dead_nuclei), 1.0, 0.6),
        "CELLMASK_CONFOCAL": lambda: fluorescence(
            -laplacian * _gaussian(squared, 1.0) * spectra["somas"] + 0.3 * spectra["somas"], 1.0, 0.55),
    }
    unknown = sorted(set(targets) - set(renderers))
    if unknown:
        raise ValueError(f"No synthetic rendering of {unknown}. Known: {', '.join(ALL_TARGETS)}")
    # Rendered in a fixed order, so each channel's noise is the same whatever else is requested.
    rendered = {name: renderers[name]() for name in ALL_TARGETS if name in targets or name in TARGETS}
    return stack, {name: rendered[name] for name in targets}


def _normalise(plane: np.ndarray, mean: float, std: float) -> np.ndarray:
    plane = (plane - plane.mean()) / max(float(plane.std()), 1e-9)
    return np.clip(mean + std * plane, 0.0, 1.0).astype(np.float32)


def _to_uint16(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)


def write_synthetic_dataset(
    output_dir: str,
    num_wells: int = 4,
    size: int | tuple[int, int] = 256,
    num_z: int = 13,
    seed: int = 0,
    nested_names: bool = False,
    modality: str = MODALITY,
    targets: tuple[str, ...] | list[str] = TARGETS,
) -> list[str]:
    """Writes `num_wells` synthetic wells, one folder each, in the lab's file naming.

    Args:
        output_dir: where the well folders go (created).
        num_wells: wells to write (named A1, A2, ...).
        size: image side, or (height, width).
        num_z: transmitted-light z slices per well (13 as in conditions A-D).
        seed: everything is a deterministic function of the seed.
        nested_names: use the nested `key,value-X` form of the paper data
            (with kind ORIGINAL) instead of the released sample form.
        modality: the transmitted-light channel name the stack is saved as
            (one of `MODALITIES`; the rendering is the same).
        targets: the fluorescence channels to write (names of `ALL_TARGETS`).

    Returns:
        The well folders written.
    """
    if num_wells < 1 or num_z < 1:
        raise ValueError(f"num_wells and num_z must be >= 1. Received: {num_wells}, {num_z}")
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 16:
        raise ValueError(f"size must be at least 16 pixels. Received: {size}")
    rng = np.random.default_rng(seed)
    directories = []
    for index in range(num_wells):
        well = f"{'ABCDEFGH'[index // 12 % 8]}{index % 12 + 1}"
        directory = os.path.join(output_dir, f"well-{well}")
        os.makedirs(directory, exist_ok=True)
        stack, rendered = render_scene(
            height, width, num_z, np.random.default_rng(rng.integers(2**63)), tuple(targets)
        )
        base = filenames.ImageKey(
            lab=LAB, condition=CONDITION, well=well, date="2024-01-15", minute="0",
            tile_computation="" if nested_names else "STITCHED",
            kind=filenames.KIND_ORIGINAL if nested_names else "", nested=nested_names,
        )
        for z in range(num_z):
            key = _replace(base, z=z, channel=modality)
            images.write_image(os.path.join(directory, filenames.format_name(key)), _to_uint16(stack[z]))
        for channel in targets:
            key = _replace(base, z=filenames.MAXPROJECT, channel=channel)
            images.write_image(os.path.join(directory, filenames.format_name(key)), _to_uint16(rendered[channel]))
        directories.append(directory)
    return directories


def _replace(key: filenames.ImageKey, **changes) -> filenames.ImageKey:
    import dataclasses

    return dataclasses.replace(key, **changes)
