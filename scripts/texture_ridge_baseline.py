"""Peer comparison for `isl readout`: ridge regression on multi-scale texture features of the input (ilastik-style).

Pixel-classifier tools (ilastik, Weka) predict from hand-made filter responses of the image at several scales.
This script fits the same ridge regression `isl readout` uses (`isl.train.readout.NormalEquations`, penalty on
standardized features) to three feature sets and prints Pearson r on the evaluation field per target:

  texture       84 filters of the transmitted-light stack, no network: four z-projections (mean, standard deviation,
                middle slice, max - min), each as is and at scales 1, 2, 4, 8, 16 px: smoothed (three box passes,
                about a Gaussian), difference to the previous scale (DoG), gradient magnitude, local standard deviation
  core          what `isl readout` fits: the network's core embedding and its box means at 1, 2, 4, 8 px
  core+texture  both

An approximation of ilastik's filter bank (no Hessian or structure-tensor eigenvalues), in numpy, for a side-by-side
figure; not a product feature. Fields: two well folders (--train_dir, --eval_dir), or one folder split at a row
(--split_row: train above, evaluate below; the embedding of the whole image, as `isl predict` computes it).

  python scripts/texture_ridge_baseline.py --model_dir=checkpoints/condition_b_sample --train_dir=WELL_A1 \
      --eval_dir=WELL_A2 --targets=DAPI_CONFOCAL
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SCALES = (1, 2, 4, 8, 16)


def smooth(image: np.ndarray, radius: int) -> np.ndarray:
    """`[H, W]` -> `[H, W]`: three box-mean passes (close to a Gaussian of sigma ~ radius)."""
    from isl.model import readout as readout_lib

    result = image[..., np.newaxis]
    for _ in range(3):
        result = readout_lib.box_mean(result, radius)
    return result[..., 0]


def texture_features(stack: np.ndarray) -> np.ndarray:
    """`[Z, H, W]` in [0, 1] -> `[H * W, 84]` float32 filter responses."""
    projections = [stack.mean(0), stack.std(0), stack[len(stack) // 2], stack.max(0) - stack.min(0)]
    responses = []
    for projection in projections:
        responses.append(projection)
        previous = projection
        for radius in SCALES:
            smoothed = smooth(projection, radius)
            row_gradient, column_gradient = np.gradient(smoothed)
            variance = smooth(projection * projection, radius) - smoothed * smoothed
            responses += [smoothed, smoothed - previous, np.hypot(row_gradient, column_gradient),
                          np.sqrt(np.maximum(variance, 0.0))]
            previous = smoothed
    return np.stack(responses, axis=-1).reshape(-1, len(responses)).astype(np.float32)


def ridge_pearson(train_x, train_y, eval_x, eval_y, penalty: float) -> list[float]:
    from isl.eval import metrics
    from isl.train import readout as fit_lib

    equations = fit_lib.NormalEquations(train_x.shape[1], train_y.shape[1])
    equations.add(train_x, train_y)
    mean, scale, weights, intercept, _ = equations.solve(penalty)
    prediction = np.clip(intercept + ((eval_x - mean) / scale) @ weights, 0, 1)
    return [metrics.pearson(prediction[:, index], eval_y[:, index]) for index in range(train_y.shape[1])]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--eval_dir")
    parser.add_argument("--split_row", type=int, help="with one folder: train on rows above, evaluate below")
    parser.add_argument("--targets", default="DAPI_CONFOCAL", help="comma-separated target channels")
    parser.add_argument("--penalty", type=float, default=100.0)
    args = parser.parse_args()
    from isl.data import wells as wells_lib
    from isl.infer import embedder as embedder_lib
    from isl.model import readout as readout_lib
    from isl.model import saving

    started = time.time()
    targets = args.targets.split(",")
    model, config = saving.load_model_dir(args.model_dir, input_size=None)
    embedder = embedder_lib.Embedder(model, config)

    def field(directory: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        well = wells_lib.read_checked_well(config, directory)
        missing = [name for name in targets if name not in well.targets]
        if missing:
            raise SystemExit(f"{directory}: no {', '.join(missing)} image")
        return well.inputs, np.stack([well.targets[name] for name in targets], -1), embedder(well.inputs)

    stack, truth, embedding = field(args.train_dir)
    if args.eval_dir:
        eval_stack, eval_truth, eval_embedding = field(args.eval_dir)
    elif args.split_row:
        row = args.split_row
        stack, eval_stack = stack[:, :row], stack[:, row:]
        truth, eval_truth = truth[:row], truth[row:]
        embedding, eval_embedding = embedding[:row], embedding[row:]
    else:
        raise SystemExit("give --eval_dir or --split_row")
    train_y, eval_y = truth.reshape(-1, len(targets)), eval_truth.reshape(-1, len(targets))
    texture, eval_texture = texture_features(stack), texture_features(eval_stack)
    core = readout_lib.features(embedding, readout_lib.DEFAULT_RADII)
    eval_core = readout_lib.features(eval_embedding, readout_lib.DEFAULT_RADII)
    print(f"features ready in {time.time() - started:.0f} s: texture {texture.shape[1]}, core {core.shape[1]}")
    sets = (("texture", texture, eval_texture), ("core", core, eval_core),
            ("core+texture", np.c_[core, texture], np.c_[eval_core, eval_texture]))
    for name, train_x, eval_x in sets:
        scores = ridge_pearson(train_x, train_y, eval_x, eval_y, args.penalty)
        print(f"{name:<13} " + "  ".join(f"{target} r {score:.3f}" for target, score in zip(targets, scores)))
    print(f"total {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
