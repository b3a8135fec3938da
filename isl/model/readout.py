"""A ridge read-out of a trained network's frozen core: fine-tuning in minutes (beyond the paper).

The paper adapts a trained network to new data by training with the 256-bin
loss, which takes hours on a few CPU cores. A read-out keeps the network's
core frozen and fits, in closed form, one ridge regression per target channel
from the core's embedding and its local averages:

    e = core(stack)                                   [H, W, E], tiled, reflect-padded by the border
    x = [e, box_r1(e), box_r2(e), ...]                [H, W, F], F = E * (1 + len(radii))
        box_r = mean over the (2r + 1)^2 window around each pixel (reflect-padded)
    prediction = clip(intercept + ((x - mean) / scale) @ weights, 0, 1)     [H, W, T]

Fitting (`isl.train.readout`) accumulates the normal equations well by well,
so memory does not grow with the number of wells. Prediction applies the map
through linearity: a box mean commutes with a map across channels, so each
part costs one `[E, T]` product and T box means instead of E.

The prediction is one value per pixel and channel (a point prediction, as the
U-Net regression makes), not a distribution over intensity bins.

File: `readout.json` in the model directory (`isl.io.model_dir.READOUT_FILE`),
next to the frozen network's `config.json` and `model.weights.h5`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.io import atomic

FORMAT_VERSION = 1
DEFAULT_RADII = (1, 2, 4, 8)
DEFAULT_PENALTY = 100.0
# Requested output side of one embedding tile (input 506 px for the paper network): modest memory.
TILE_OUTPUT = 264


@dataclasses.dataclass(frozen=True)
class Readout:
    """A fitted read-out: standardized features -> target values.

    Attributes:
        targets: the target channels, in output order (T).
        radii: box-mean radii of the context features, in pixels.
        feature_mean: `[F]` training mean of each feature.
        feature_scale: `[F]` training standard deviation of each feature.
        weights: `[F, T]` ridge weights on standardized features.
        intercept: `[T]` training mean of each target.
        penalty: the ridge penalty the weights were fitted with.
        record: what the fit saw and scored (wells, pixels, Pearson r, seconds).
    """

    targets: tuple[str, ...]
    radii: tuple[int, ...]
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    weights: np.ndarray
    intercept: np.ndarray
    penalty: float
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def embedding_size(self) -> int:
        """E: channels of the core embedding the read-out takes."""
        return self.weights.shape[0] // (1 + len(self.radii))

    def predict(self, embedding: np.ndarray) -> np.ndarray:
        """`[H, W, E]` core embedding -> `[H, W, T]` float32 target values in [0, 1]."""
        if embedding.ndim != 3 or embedding.shape[-1] != self.embedding_size:
            raise ValueError(f"The read-out takes [H, W, {self.embedding_size}] embeddings; got {embedding.shape}.")
        size = self.embedding_size
        # Standardization folded into the weights: x @ (w / s) + (b - (m / s) @ w).
        scaled = self.weights / self.feature_scale[:, np.newaxis]
        bias = self.intercept - (self.feature_mean / self.feature_scale) @ self.weights
        flat = embedding.reshape(-1, size).astype(np.float32)
        result = (flat @ scaled[:size].astype(np.float32)).reshape(embedding.shape[:2] + (-1,))
        for part, radius in enumerate(self.radii, start=1):
            mapped = (flat @ scaled[part * size : (part + 1) * size].astype(np.float32))
            result += box_mean(mapped.reshape(embedding.shape[:2] + (-1,)), radius)
        return np.clip(result + bias.astype(np.float32), 0.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "targets": list(self.targets),
            "radii": list(self.radii),
            "penalty": self.penalty,
            "intercept": self.intercept.tolist(),
            "feature_mean": self.feature_mean.tolist(),
            "feature_scale": self.feature_scale.tolist(),
            "weights": self.weights.tolist(),
            "record": self.record,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Readout:
        """Raises ValueError or KeyError on a malformed record."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        targets = tuple(str(name) for name in data["targets"])
        radii = tuple(int(radius) for radius in data["radii"])
        weights = np.asarray(data["weights"], np.float64)
        mean = np.asarray(data["feature_mean"], np.float64)
        scale = np.asarray(data["feature_scale"], np.float64)
        intercept = np.asarray(data["intercept"], np.float64)
        if not targets or weights.shape != (mean.size, len(targets)) or scale.shape != mean.shape:
            raise ValueError(f"weights {weights.shape}, feature_mean {mean.shape}, feature_scale {scale.shape} "
                             f"do not fit {len(targets)} targets")
        if intercept.shape != (len(targets),) or mean.size % (1 + len(radii)) or np.any(scale <= 0):
            raise ValueError("intercept, radii or feature_scale do not fit the weights")
        if not np.all(np.isfinite(weights)) or not np.all(np.isfinite(mean)):
            raise ValueError("non-finite weights")
        record = dict(data.get("record", {}))
        return cls(targets, radii, mean, scale, weights, intercept, float(data["penalty"]), record)


def save(readout: Readout, path: str) -> None:
    """Writes `readout.json` atomically."""
    atomic.write_text(path, json.dumps(readout.to_json()) + "\n")


def load(path: str) -> Readout:
    """Reads `readout.json`.

    Raises:
        InputError: naming the file, when it is unreadable or malformed.
    """
    try:
        with open(path) as file:
            return Readout.from_json(json.load(file))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise errors.InputError(f"{path}: not a valid read-out ({error}). Fit it again with `isl readout`.") from None


def box_mean(images: np.ndarray, radius: int) -> np.ndarray:
    """`[H, W, C]` -> `[H, W, C]`: the mean over the (2 radius + 1)^2 window, reflect-padded, per channel."""
    if radius < 1:
        return images
    padded = np.pad(images.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    total = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))
    n = 2 * radius + 1
    window = total[n:, n:] - total[:-n, n:] - total[n:, :-n] + total[:-n, :-n]
    return (window / (n * n)).astype(np.float32)


def features(embedding: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """`[H, W, E]` -> `[H * W, E * (1 + len(radii))]`: the embedding, then its box means (row-major pixels)."""
    parts = [embedding.astype(np.float32)] + [box_mean(embedding, radius) for radius in radii]
    return np.concatenate(parts, axis=-1).reshape(-1, embedding.shape[-1] * len(parts))


def check_radii(radii: Sequence[int]) -> tuple[int, ...]:
    """Validated radii (positive, distinct, increasing). Raises InputError."""
    radii = tuple(int(radius) for radius in radii)
    if any(radius < 1 for radius in radii) or list(radii) != sorted(set(radii)):
        raise errors.InputError(f"--radii must be distinct positive integers in increasing order. Received: {radii}")
    return radii


class Embedder:
    """Runs a model's frozen core over whole images in tiles.

    Tiles start on multiples of the network's shift period, so every tile
    sees the same alignment and the embedding has no seams.

    Args:
        model: a built model with 256-bin heads (`isl.model.builder`), any input size.
        config: its config.
    """

    def __init__(self, model: Any, config: config_lib.ExperimentConfig) -> None:
        from isl.infer import graph as graph_lib
        from isl.model import builder
        from isl.model import geometry as geometry_lib

        if config.model.architecture == "unet_regression":
            raise errors.InputError(
                "A read-out needs a network with a core embedding and 256-bin heads; the U-Net regression has none."
            )
        output_size = TILE_OUTPUT
        while True:
            try:
                tile = geometry_lib.geometry(config.model, output_size)
                break
            except ValueError:
                output_size -= 1
                if output_size < 1:
                    raise errors.InputError("No tile size fits this network's geometry.") from None
        self.border = tile.border
        self.input_size = tile.input_size
        self.output_size = tile.output_size
        self.stride = max(tile.phase, (tile.output_size // tile.phase) * tile.phase)
        self.num_z_values = config.channels.num_z_values
        self.core = builder.core_model(graph_lib.inference_model(model))
        self.embedding_size = int(self.core.output.shape[-1])

    def num_tiles(self, shape: tuple[int, int]) -> int:
        """Tiles for an image of (height, width)."""
        return (-(-shape[0] // self.stride)) * (-(-shape[1] // self.stride))

    def __call__(self, stack: np.ndarray, progress: Callable[[], None] | None = None) -> np.ndarray:
        """`[num_source_z, H, W]` in [0, 1] -> `[H, W, E]` float32 embedding."""
        from isl.data import assemble

        if stack.ndim != 3:
            raise errors.InputError(f"A source stack must be [num_source_z, height, width]; got shape {stack.shape}.")
        height, width = stack.shape[1:]
        rows = -(-height // self.stride) * self.stride + self.output_size - self.stride
        columns = -(-width // self.stride) * self.stride + self.output_size - self.stride
        pad = ((0, 0), (self.border, self.border + rows - height), (self.border, self.border + columns - width))
        padded = np.pad(stack, pad, mode="reflect" if min(height, width) > 1 else "edge")
        inputs = assemble.network_input(padded, self.num_z_values)
        result = np.zeros((rows, columns, self.embedding_size), np.float32)
        for top in range(0, rows - self.output_size + 1, self.stride):
            for left in range(0, columns - self.output_size + 1, self.stride):
                tile = inputs[np.newaxis, top : top + self.input_size, left : left + self.input_size]
                output = np.asarray(self.core.predict_on_batch(tile), np.float32)[0]
                result[top : top + self.stride, left : left + self.stride] = output[: self.stride, : self.stride]
                if progress is not None:
                    progress()
        return result[:height, :width]
