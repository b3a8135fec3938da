"""The model directory's layout: the one owner of its file and folder names.

    MODEL_DIR/
      config.json              the fully resolved ExperimentConfig
      model.weights.h5         the newest (or, with train.keep_best, the best) inference weights
      trained_channels.json    the target heads that saw labels in training (optional)
      readout.json             a ridge read-out of the frozen core (`isl readout`; optional)
      calibration.json         temperatures / spread scales and the marginal histogram (`isl calibrate`; optional)
      checkpoints/             resumable training state (tf.train.Checkpoint)
        best.weights.h5        the best whole-image weights so far (train.keep_best)
        best.json              their step and figures
      .tmp-WORKER-checkpoints/ a non-chief worker's private checkpoints during a multi-worker run
      logs/                    TensorBoard events (train/, eval/), training.csv, summary.json

`isl train` writes it, `isl predict`, `isl export`, `isl recalibrate`, `isl
curves` and transfer learning read it. An exported SavedModel (`isl export`)
carries its own `config.json` and `trained_channels.json` under the same
names. Modules use `ModelDir(path).config` etc. or the constants, never the
literal names.
"""

from __future__ import annotations

import dataclasses
import os

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
TRAINED_CHANNELS_FILE = "trained_channels.json"
READOUT_FILE = "readout.json"
CALIBRATION_FILE = "calibration.json"
CHECKPOINT_DIR = "checkpoints"
BEST_WEIGHTS_FILE = "best.weights.h5"
BEST_INFO_FILE = "best.json"
LOG_DIR = "logs"
TRAINING_CSV = "training.csv"
SUMMARY_FILE = "summary.json"


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """The paths inside one model directory.

    Attributes:
        root: the model directory.
    """

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.fspath(self.root))

    @property
    def config(self) -> str:
        return os.path.join(self.root, CONFIG_FILE)

    @property
    def weights(self) -> str:
        return os.path.join(self.root, WEIGHTS_FILE)

    @property
    def trained_channels(self) -> str:
        return os.path.join(self.root, TRAINED_CHANNELS_FILE)

    @property
    def readout(self) -> str:
        return os.path.join(self.root, READOUT_FILE)

    @property
    def calibration(self) -> str:
        return os.path.join(self.root, CALIBRATION_FILE)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, CHECKPOINT_DIR)

    def worker_checkpoints(self, worker: str) -> str:
        """The private checkpoint folder of a non-chief worker (`strategy.worker_id`), removed at the end of a run.

        Its name starts with `.tmp-`, so a killed worker's leftover reads as temporary.
        """
        return os.path.join(self.root, f".tmp-{worker}-checkpoints")

    @property
    def best_weights(self) -> str:
        return os.path.join(self.checkpoints, BEST_WEIGHTS_FILE)

    @property
    def best_info(self) -> str:
        return os.path.join(self.checkpoints, BEST_INFO_FILE)

    @property
    def logs(self) -> str:
        return os.path.join(self.root, LOG_DIR)

    def log_split(self, split: str) -> str:
        """The TensorBoard folder of a split ("train", "eval", "validation")."""
        return os.path.join(self.logs, split)

    @property
    def training_csv(self) -> str:
        return os.path.join(self.logs, TRAINING_CSV)

    @property
    def summary(self) -> str:
        return os.path.join(self.logs, SUMMARY_FILE)

    def missing(self) -> list[str]:
        """The names of the two files every model directory has (config, weights) that are absent."""
        return [os.path.basename(path) for path in (self.config, self.weights) if not os.path.isfile(path)]
