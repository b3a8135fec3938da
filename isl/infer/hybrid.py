"""The hybrid U-Net's frozen core (`model.hybrid_features`, not in the paper): a model folder with 256-bin heads whose
core embedding (`isl.infer.embedder.Embedder`, E = 64 features per pixel for the paper's network, ~250 px of
context) feeds the U-Net regression as E extra input channels after the transmitted light.

The embedding costs far more than the U-Net (about 250 s for a 1024 x 768 well on 2 cores against ~8 s), so it is
computed once per well: `isl convert --embed_with` stores it in the records (float16, `embedding/data`), training
crops it with the light, and `isl predict` computes it here before the U-Net. The frozen folder is named by its
absolute path and checked by fingerprint (`isl.io.calibration_file.fingerprint`) wherever it is used.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from isl import config as config_lib
from isl import errors
from isl.infer import embedder as embedder_lib
from isl.io import calibration_file
from isl.io import model_dir as model_dir_lib

DESCRIPTION_KEY = "embedding"  # dataset.json's block describing the records' embedding.


def open_frozen(model_dir: str, fingerprint: str = "", owner: str = "") -> tuple[embedder_lib.Embedder, dict]:
    """Loads a frozen model folder's core as an Embedder, checked against `fingerprint` when given.

    Args:
        model_dir: the frozen folder (a network with 256-bin heads).
        fingerprint: the fingerprint recorded when the hybrid was made ("" skips the check).
        owner: what refers to it (a hybrid model folder, a flag), named in errors.

    Returns:
        (the Embedder, its description for dataset.json: model_dir, fingerprint, size, normalization,
        num_z_values).

    Raises:
        InputError: the folder is missing, not a model, changed since, or has no core embedding.
    """
    from isl.model import saving

    where = f"{owner}: " if owner else ""
    layout = model_dir_lib.ModelDir(model_dir)
    if not os.path.isfile(layout.config) or not os.path.isfile(layout.weights):
        raise errors.InputError(f"{where}the hybrid's frozen model folder {model_dir} is missing or not a model "
                                "folder (config.json and model.weights.h5).")
    found = calibration_file.fingerprint(model_dir)
    if fingerprint and found != fingerprint:
        raise errors.InputError(f"{where}the hybrid's frozen model folder {model_dir} changed since the hybrid was "
                                "made (its fingerprint differs); restore it, or convert and train again with it.")
    model, config = saving.load_model_dir(model_dir, input_size=None)
    embedder = embedder_lib.Embedder(model, config)
    info = {"model_dir": os.path.abspath(model_dir), "fingerprint": found, "size": embedder.embedding_size,
            "normalization": config.data.normalization, "num_z_values": config.channels.num_z_values}
    return embedder, info


def window_embedding(embedder: embedder_lib.Embedder, stack: np.ndarray, window: tuple[int, int, int, int]
                     ) -> np.ndarray:
    """`[r1 - r0, c1 - c0, E]` float32: the embedding of the `[Z, H, W]` stack on `window` (r0, r1, c0, c1).

    Computed from the window plus the network's border (`Embedder.crop_for`), so it equals the whole
    image's embedding there, with memory of that crop only.
    """
    row0, row1, column0, column1 = window
    top, bottom, left, right = embedder.crop_for(stack.shape[1:], window)
    embedding = embedder(np.asarray(stack[:, top:bottom, left:right], np.float32))
    return embedding[row0 - top : row1 - top, column0 - left : column1 - left]


def with_embedding(config: config_lib.ExperimentConfig, description: dict | None, data_dir: str
                   ) -> config_lib.ExperimentConfig:
    """A hybrid's config with its frozen folder's fingerprint and the records' embedding statistics filled in.

    Raises:
        InputError: the records carry no embedding, or one from another (or a changed) folder, or one made
            with another normalisation than the training data's.
    """
    model = config.model
    block = (description or {}).get(DESCRIPTION_KEY)
    if not block:
        raise errors.InputError(f"--data_dir {data_dir}: its records carry no embedding, which the hybrid "
                                f"(model.hybrid_features={model.hybrid_features}) trains on; convert them with "
                                f"isl convert --embed_with={model.hybrid_features}.")
    folder = os.path.abspath(model.hybrid_features)
    layout = model_dir_lib.ModelDir(folder)
    if not os.path.isfile(layout.weights):
        raise errors.InputError(f"model.hybrid_features={model.hybrid_features}: not a model folder "
                                "(model.weights.h5 is missing).")
    found = calibration_file.fingerprint(folder)
    if found != block.get("fingerprint"):
        raise errors.InputError(
            f"--data_dir {data_dir}: its embedding was made with {block.get('model_dir')}, not with "
            f"model.hybrid_features={model.hybrid_features} as it is now (the fingerprints differ); convert again "
            f"with --embed_with={model.hybrid_features}.")
    if model.hybrid_fingerprint and model.hybrid_fingerprint != found:
        raise errors.InputError(f"model.hybrid_features={model.hybrid_features}: the folder changed since this "
                                "run started (its fingerprint differs from config.json's).")
    if block.get("num_z_values", config.channels.num_z_values) != config.channels.num_z_values:
        raise errors.InputError(f"model.hybrid_features={model.hybrid_features}: the frozen network takes "
                                f"{block['num_z_values']} z values, this U-Net {config.channels.num_z_values} "
                                "(channels.num_z_values); they must match.")
    if not block.get("mean"):
        raise errors.InputError(f"--data_dir {data_dir}: its embedding has no training statistics (no training "
                                "examples were converted).")
    return dataclasses.replace(config, model=dataclasses.replace(
        model, hybrid_features=folder, hybrid_fingerprint=found, hybrid_embedding_size=int(block["size"]),
        hybrid_embedding_mean=tuple(block["mean"]), hybrid_embedding_std=tuple(block["std"])))


def predictor_embedder(predictor: Any) -> embedder_lib.Embedder:
    """The hybrid predictor's frozen Embedder (opened at load, `isl.infer.kinds.regression`)."""
    if predictor.readout_embedder is None:
        model = predictor.config.model
        predictor.readout_embedder, _ = open_frozen(model.hybrid_features, model.hybrid_fingerprint,
                                                    str(predictor.source))
    return predictor.readout_embedder

