"""Writes the worked example's "own microscope" data: an 8-bit bright-field-like z-stack and a 12-bit Hoechst image.

The data are DERIVED, not a real bright-field acquisition: the transmitted-light slices of the released
Condition B sample are turned into what a different microscope and camera might save (inverted contrast as
bright field shows thin cells, a vignetted illumination, a brightness drift through focus, an 8-bit camera), and
its DAPI image is saved as a 12-bit "Hoechst" image in a 16-bit TIFF. Each field of view is one folder with a
manifest in the generic layout (data/README.md), with the user's own channel names (BRIGHTFIELD, HOECHST):

    OUT/B3/  rows 0:768 of the sample    bf_stack.tif (13 x 768 x 768, uint8), hoechst.tif, manifest.csv
    OUT/B4/  rows 768:1024 (held out)    the same, 256 x 768

    python scripts/bright_field_example.py --sample_dir=../shared/data/condition_b_sample --output_dir=plate1

See docs/USAGE.md, "Your own bright-field z-stack -> nuclear stain".
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

FIELDS = {"B3": slice(0, 768), "B4": slice(768, 1024)}
MANIFEST = "file,channel,z,bits\nbf_stack.tif,BRIGHTFIELD,,\nhoechst.tif,HOECHST,,12\n"


def bright_field(phase: np.ndarray) -> np.ndarray:
    """`[Z, H, W]` phase contrast in [0, 1] (the paper's normalisation) -> `[Z, H, W]` uint8 "bright field"."""
    num_z, height, width = phase.shape
    rows = (np.arange(height)[:, None] - height / 2) / max(height, width)
    columns = (np.arange(width)[None, :] - width / 2) / max(height, width)
    vignette = 1.0 - 0.6 * (rows**2 + columns**2)
    out = np.empty(phase.shape, np.uint8)
    for z in range(num_z):
        drift = 1.0 + 0.03 * (z - num_z // 2)
        value = (0.62 - 0.45 * (phase[z] - 0.5)) * vignette * drift
        out[z] = np.round(np.clip(value, 0, 1) * 255).astype(np.uint8)
    return out


def main(argv: list[str]) -> None:
    import tifffile

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from isl import config as config_lib
    from isl.data import wells

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    arguments = parser.parse_args(argv)
    channels = config_lib.ChannelConfig(input_modalities=("PHASE_CONTRAST",), target_channels=("DAPI_CONFOCAL",))
    well = wells.read_well(arguments.sample_dir, channels, ignore_unknown=True)
    for name, rows in FIELDS.items():
        folder = os.path.join(arguments.output_dir, name)
        os.makedirs(folder, exist_ok=True)
        tifffile.imwrite(os.path.join(folder, "bf_stack.tif"), bright_field(well.inputs[:, rows]))
        hoechst = np.round(well.targets["DAPI_CONFOCAL"][rows] * 4095).astype(np.uint16)
        tifffile.imwrite(os.path.join(folder, "hoechst.tif"), hoechst)
        with open(os.path.join(folder, "manifest.csv"), "w") as handle:
            handle.write(MANIFEST)
        print(f"{folder}: bf_stack.tif {list(well.inputs[:, rows].shape)} uint8, hoechst.tif 12-bit, manifest.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
