"""Probe: a ridge read-out of a trained network's frozen core, as a minutes-long fine-tune (not yet a feature).

Computes the core's embedding (`isl.model.builder.core_model`, `[rows, columns, E]`) of a transmitted-light
stack in tiles, adds box means of it at 1, 2, 4 and 8 px (local context), fits a ridge regression from those
features to one target channel on the training field, and prints Pearson r on the evaluation field, next to
the plain linear read-out. Fields: two well folders (--train_dir, --eval_dir), or one folder split by rows.

Usage:
  python scripts/readout_probe.py --model_dir=checkpoints/condition_b_sample --train_dir=WELL_A1 \
      --eval_dir=WELL_A2 --targets=DAPI_CONFOCAL
  python scripts/readout_probe.py --model_dir=... --train_dir=../shared/data/condition_b_sample \
      --split_row=768 --targets=DAPI_CONFOCAL,NFH_CONFOCAL,MAP2_CONFOCAL
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

TILE_OUTPUT = 264  # tiles of 264-px outputs (input 506 for the paper network): modest memory


def load_field(folder: str, targets: list[str], channels) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`[z, rows, columns]` transmitted light and `[rows, columns]` targets by name, in [0, 1] (`wells.read_well`)."""
    from isl.data import wells

    well = wells.read_well(folder, channels, ignore_unknown=True)
    missing = [name for name in targets if name not in well.targets]
    if missing:
        raise SystemExit(f"{folder}: no {', '.join(missing)} image")
    return well.inputs, {name: well.targets[name] for name in targets}


def embed(core, stack: np.ndarray, border: int, num_z_values: int) -> np.ndarray:
    """The core's embedding `[rows, columns, E]` of a stack, tiled, reflect-padded by the border."""
    from isl.data import assemble

    rows, columns = stack.shape[1:]
    padded_rows = -(-rows // TILE_OUTPUT) * TILE_OUTPUT
    padded_columns = -(-columns // TILE_OUTPUT) * TILE_OUTPUT
    padded = np.pad(stack, ((0, 0), (border, border + padded_rows - rows), (border, border + padded_columns - columns)),
                    mode="reflect")
    inputs = assemble.network_input(padded, num_z_values, np.ones(padded.shape[1:], np.float32))
    size = TILE_OUTPUT + 2 * border
    result = None
    for top in range(0, padded_rows, TILE_OUTPUT):
        for left in range(0, padded_columns, TILE_OUTPUT):
            tile = np.asarray(core(inputs[None, top : top + size, left : left + size], training=False), np.float32)[0]
            if result is None:
                result = np.zeros((padded_rows, padded_columns, tile.shape[-1]), np.float32)
            result[top : top + TILE_OUTPUT, left : left + TILE_OUTPUT] = tile
    return result[:rows, :columns]


def box_mean(features: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2 radius + 1)² window, reflect-padded, per channel."""
    padded = np.pad(features, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    total = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    n = 2 * radius + 1
    return (total[n:, n:] - total[:-n, n:] - total[n:, :-n] + total[:-n, :-n]) / (n * n)


def design(embedding: np.ndarray, radii: tuple[int, ...]) -> np.ndarray:
    parts = [embedding] + [box_mean(embedding, radius) for radius in radii]
    return np.concatenate(parts, axis=-1).reshape(-1, embedding.shape[-1] * len(parts))


def ridge_pearson(train_x, train_y, eval_x, eval_y, penalty: float) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    b = np.c_[(eval_x - mean) / std, np.ones(len(eval_x))]
    weights = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ train_y)
    return float(np.corrcoef(b @ weights, eval_y)[0, 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--eval_dir")
    parser.add_argument("--split_row", type=int, help="with one folder: train on rows above, evaluate below")
    parser.add_argument("--targets", default="DAPI_CONFOCAL", help="comma-separated target channels")
    parser.add_argument("--penalty", type=float, default=100.0)
    args = parser.parse_args()
    from isl.data.layout import patch_layout
    from isl.model import builder, saving

    started = time.time()
    targets = args.targets.split(",")
    border = patch_layout(config_of(args.model_dir)).border
    model, config = saving.load_model_dir(args.model_dir, TILE_OUTPUT + 2 * border)
    core = builder.core_model(model)
    stack, target = load_field(args.train_dir, targets, config.channels)
    embedding = embed(core, stack, border, config.channels.num_z_values)
    if args.eval_dir:
        eval_stack, eval_target = load_field(args.eval_dir, targets, config.channels)
        eval_embedding = embed(core, eval_stack, border, config.channels.num_z_values)
    else:
        if not args.split_row:
            raise SystemExit("give --eval_dir or --split_row")
        embedding, eval_embedding = embedding[: args.split_row], embedding[args.split_row :]
        eval_target = {name: values[args.split_row :] for name, values in target.items()}
        target = {name: values[: args.split_row] for name, values in target.items()}
    print(f"embeddings {embedding.shape} and {eval_embedding.shape} in {time.time() - started:.0f} s")
    for radii in ((), (1, 2, 4, 8)):
        train_x, eval_x = design(embedding, radii), design(eval_embedding, radii)
        for name in targets:
            fitted = time.time()
            r = ridge_pearson(train_x, target[name].ravel(), eval_x, eval_target[name].ravel(), args.penalty)
            print(f"{name}: ridge read-out, box means at {radii or 'none'}: Pearson r {r:.3f} "
                  f"({time.time() - fitted:.0f} s to fit)")
    print(f"total {time.time() - started:.0f} s")
    return 0


def config_of(model_dir: str):
    from isl import config as config_lib
    from isl.io import model_dir as model_dir_lib

    return config_lib.load_config(os.path.join(model_dir, model_dir_lib.CONFIG_FILE))


if __name__ == "__main__":
    raise SystemExit(main())
