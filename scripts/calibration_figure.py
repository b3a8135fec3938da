"""PIT histograms of several `isl evaluate` runs side by side: one column per run, one row per channel.

Each cell is the PIT histogram of that run and channel (`isl.eval.report.draw_pit`: bars = pixels, dashed =
calibrated), titled with its 50% and 90% interval coverage and information gain. For a figure of calibration before
and after `isl calibrate`, of several routes, in the docs.

  python scripts/calibration_figure.py --output=docs/condition_b_calibration.png \
      "heads, as trained=eval_raw/metrics.json" "heads, calibrated=eval_cal/metrics.json"
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

CELL_WIDTH, CELL_HEIGHT = 200, 150
LEFT, TOP, GAP, TITLE = 44, 54, 40, 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=metrics.json of an isl evaluate run")
    parser.add_argument("--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="a line above the figure")
    arguments = parser.parse_args()
    from PIL import Image, ImageDraw

    from isl.eval import report

    runs = []
    for spec in arguments.runs:
        label, _, path = spec.partition("=")
        rows = {row["channel"]: row for row in json.load(open(path))["rows"]}
        runs.append((label, rows))
    channels = [channel for channel in runs[0][1] if all(channel in rows for _, rows in runs)]
    width = LEFT + len(runs) * (CELL_WIDTH + LEFT + GAP)
    height = TOP + len(channels) * (CELL_HEIGHT + TITLE + GAP + 20)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), arguments.title, fill=(0, 0, 0))
    for column, (label, rows) in enumerate(runs):
        left = LEFT + column * (CELL_WIDTH + LEFT + GAP) + LEFT
        draw.text((left - LEFT, 26), label, fill=(0, 0, 0))
        for index, channel in enumerate(channels):
            row = rows[channel]
            top = TOP + index * (CELL_HEIGHT + TITLE + GAP + 20) + TITLE
            gain = row.get("information_gain_bits")
            gain_text = "n/a" if gain is None or (isinstance(gain, float) and math.isnan(gain)) else f"{gain:+.2f}"
            draw.text((left - LEFT, top - TITLE + 2), f"{channel}: 50% {row['coverage_50']:.0%}, "
                      f"90% {row['coverage_90']:.0%}", fill=(0, 0, 0))
            draw.text((left - LEFT, top - TITLE + 14), f"information gain {gain_text} bit/px", fill=(0, 0, 0))
            report.draw_pit(draw, row["pit_histogram"], left, top, CELL_WIDTH, CELL_HEIGHT)
    image.save(arguments.output, optimize=True)
    print(f"Wrote {arguments.output} ({np.asarray(image).shape[1]} x {np.asarray(image).shape[0]} px)")


if __name__ == "__main__":
    main()
