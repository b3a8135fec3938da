"""Hyperparameter search with Keras Tuner over the ISL search space.

`run_search` runs a random, Bayesian or Hyperband search of
`isl.model.hypermodel.ISLHyperModel` on the tf.data pipeline: each trial
trains on the train shards of `data_dir` for `steps_per_trial` steps and is
scored on the validation shards (`isl convert --val_wells / --val_region`), or
on the eval shards when the dataset has none (`val_loss` by default, the
paper's total loss, §2). Everything lives in `tuner_dir`:

    TUNER_DIR/
      search_setup.json   base config, search space and tuner of this search
      search/             Keras Tuner's project: oracle.json, trial_*/ ...
      best_config.json    {"config": {...}, "hyperparameters": {...}, ...};
                          `isl train --config=best_config.json` reads it
      trials.csv          one row per trial: id, status, score, values
      trials.png          objective per trial (dots) and best so far (line)

Running the same search again resumes it: finished trials are kept, a trial
that was running when the search stopped is run again.

Distributed search uses Keras Tuner's own mechanism: start the same command
once with `KERASTUNER_TUNER_ID=chief` (it runs the oracle, a gRPC server on
`KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT`, and trains nothing) and on each
worker with `KERASTUNER_TUNER_ID=tuner0`, `tuner1`, ... and the same IP/port.
The chief writes the summary when every worker has finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import keras_tuner
import numpy as np
import tensorflow as tf

from isl import config as config_lib
from isl import errors
from isl.data import pipeline
from isl.io import atomic
from isl.model import hypermodel as hypermodel_lib
from isl.train import resilience
from isl.train import step as step_lib

TUNERS = ("random", "bayesian", "hyperband")
PROJECT_NAME = "search"
SETUP_FILE = "search_setup.json"
BEST_CONFIG_FILE = "best_config.json"
TRIALS_CSV = "trials.csv"
TRIALS_PLOT = "trials.png"

# Hyperband: the longest trial trains for HYPERBAND_MAX_EPOCHS "epochs" of
# steps_per_trial / HYPERBAND_MAX_EPOCHS steps, so it gets steps_per_trial.
HYPERBAND_MAX_EPOCHS = 3
HYPERBAND_FACTOR = 3

# Random samples drawn before giving up on finding a valid architecture.
MAX_SAMPLING_ATTEMPTS = 200


@dataclasses.dataclass(frozen=True)
class TrialSummary:
    """One trial of a search: id, status, objective value and values."""

    trial_id: str
    status: str
    score: float | None
    values: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a search wrote and found.

    Attributes:
        role: "standalone", "chief" or "worker" (a worker writes no summary).
        tuner_dir: the search directory.
        best_config_path, trials_csv_path, plot_path: files written (None on
            a worker, or when no trial completed).
        best_score, best_values, best_trial_id: the best trial.
        trials: every trial of the search, in id order.
    """

    role: str
    tuner_dir: str
    best_config_path: str | None = None
    trials_csv_path: str | None = None
    plot_path: str | None = None
    best_score: float | None = None
    best_values: dict[str, Any] | None = None
    best_trial_id: str | None = None
    trials: tuple[TrialSummary, ...] = ()


def parse_objective(spec: str) -> keras_tuner.Objective:
    """`val_loss` or `NAME:min|max` -> keras_tuner.Objective.

    Names ending in "loss" are minimised unless a direction is given.
    """
    name, _, direction = (spec or "val_loss").partition(":")
    name = name.strip()
    if not name:
        raise errors.InputError(f"Bad objective {spec!r}: give a metric name, e.g. val_loss.")
    if not direction:
        if not name.endswith("loss"):
            raise errors.InputError(
                f"Objective {name!r}: say whether to minimise or maximise it ({name}:min or {name}:max)."
            )
        direction = "min"
    if direction not in ("min", "max"):
        raise errors.InputError(f"Bad objective direction {direction!r} in {spec!r}: min or max.")
    return keras_tuner.Objective(name, direction)


def role_from_environment(environment: Mapping[str, str] | None = None) -> str:
    """"chief", "worker" or "standalone", from Keras Tuner's variables."""
    environment = os.environ if environment is None else environment
    if "KERASTUNER_ORACLE_IP" not in environment:
        return "standalone"
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if name not in environment:
            raise errors.InputError(f"KERASTUNER_ORACLE_IP is set but {name} is not.")
    return "chief" if "chief" in environment["KERASTUNER_TUNER_ID"] else "worker"


# ---------------------------------------------------------------------------
# Oracles that never hand out an architecture without a valid geometry
# ---------------------------------------------------------------------------


def _geometry_aware(oracle_class: type) -> type:
    """A subclass of `oracle_class` whose random samples are all buildable.

    Invalid samples (no geometry, §1.4-§1.6) are recorded as tried and drawn
    again, so they cost no trial. The Bayesian oracle's model-based proposals
    fall back to a random valid sample when invalid.
    """

    class GeometryAwareOracle(oracle_class):
        def __init__(self, *args: Any, invalid_reason: Callable[[Mapping[str, Any]], str | None], **kwargs: Any):
            self._invalid_reason = invalid_reason
            super().__init__(*args, **kwargs)

        def _random_values(self):
            values = None
            for _ in range(MAX_SAMPLING_ATTEMPTS):
                values = super()._random_values()
                if values is None or self._invalid_reason(values) is None:
                    return values
                self._tried_so_far.add(self._compute_values_hash(values))
            return values  # The trial then fails cleanly in build().

        def populate_space(self, trial_id):
            response = super().populate_space(trial_id)
            values = response.get("values")
            if (
                response.get("status") == keras_tuner.engine.trial.TrialStatus.RUNNING
                and values
                and self._invalid_reason(values) is not None
                and hasattr(self, "_random_populate_space")
            ):
                return self._random_populate_space()
            return response

    GeometryAwareOracle.__name__ = f"GeometryAware{oracle_class.__name__}"
    return GeometryAwareOracle


class _ISLTunerMixin:
    """Trains each trial on the trial's own tf.data pipeline.

    The pipeline depends on the sampled architecture (its input size sets the
    patch size), so datasets are built per trial from the trial's config.
    """

    def _setup_isl(
        self,
        data_dir: str,
        steps_per_epoch: int,
        epochs: int,
        eval_steps: int | None,
        callbacks: Sequence[keras.callbacks.Callback],
        verbose: int,
    ) -> None:
        self.isl_data_dir = data_dir
        self.isl_steps_per_epoch = steps_per_epoch
        self.isl_epochs = epochs
        self.isl_eval_steps = eval_steps
        self.isl_callbacks = list(callbacks)
        self.isl_verbose = verbose

        self.isl_split = pipeline.selection_split(data_dir)

    def _populate_initial_space(self) -> None:
        # The space has no conditional hyperparameters, so declaring it is
        # enough; Keras Tuner's default would also build a (paper-size) model.
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def run_trial(self, trial, *args, **kwargs):
        try:
            return self._isl_run_trial(trial, *args, **kwargs)
        except Exception as error:
            if isinstance(error, tf.errors.DataLossError):  # Name the damaged shard.
                error = resilience.data_error(self.isl_data_dir, error, None) or error
            if getattr(self, "isl_first_error", None) is None:
                self.isl_first_error = error
            if isinstance(error, errors.InputError):
                raise error from None
            raise

    def _isl_run_trial(self, trial, *args, **kwargs):
        config = self.hypermodel.config_for(trial.hyperparameters)
        keras.utils.set_random_seed(config.train.seed)
        train_data = pipeline.build_dataset(self.isl_data_dir, config, split="train", seed=config.train.seed)
        eval_data = pipeline.build_dataset(
            self.isl_data_dir, config, split=self.isl_split, seed=config.train.seed, deterministic=True, repeat=True
        )
        kwargs.setdefault("epochs", self.isl_epochs)
        kwargs.update(
            x=train_data,
            validation_data=eval_data,
            steps_per_epoch=self.isl_steps_per_epoch,
            validation_steps=self.isl_eval_steps or config.train.eval_batches,
            verbose=self.isl_verbose,
            shuffle=False,  # The pipeline shuffles.
        )
        return super().run_trial(trial, *args, **kwargs)

    def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
        # Keras Tuner imports tensorboard here even without a TensorBoard
        # callback; isl does not depend on tensorboard, so only go on with one.
        if any(type(callback).__name__ == "TensorBoard" for callback in callbacks):
            super()._configure_tensorboard_dir(callbacks, trial, execution)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        # Added after Keras Tuner's deep copy of the callbacks, so progress
        # bars and test hooks keep their state across trials.
        kwargs["callbacks"] = list(kwargs.get("callbacks", [])) + self.isl_callbacks
        return super()._build_and_fit_model(trial, *args, **kwargs)


class _RandomTuner(_ISLTunerMixin, keras_tuner.Tuner):
    pass


class _HyperbandTuner(_ISLTunerMixin, keras_tuner.Hyperband):
    """Keras Tuner's Hyperband trial logic on a geometry-aware oracle."""

    def __init__(self, oracle: keras_tuner.Oracle, **kwargs: Any) -> None:
        # Hyperband.__init__ builds its own oracle; keep its trial logic only.
        keras_tuner.Tuner.__init__(self, oracle=oracle, **kwargs)


def _make_oracle(
    tuner: str,
    objective: keras_tuner.Objective,
    max_trials: int,
    seed: int,
    invalid_reason: Callable[[Mapping[str, Any]], str | None],
) -> keras_tuner.Oracle:
    common = dict(objective=objective, seed=seed, invalid_reason=invalid_reason, max_consecutive_failed_trials=5)
    if tuner == "random":
        return _geometry_aware(keras_tuner.oracles.RandomSearchOracle)(max_trials=max_trials, **common)
    if tuner == "bayesian":
        try:
            import scipy  # noqa: F401  (Keras Tuner's Bayesian oracle needs both)
            import sklearn  # noqa: F401
        except ImportError:
            raise errors.InputError(
                "--tuner=bayesian needs scipy and scikit-learn: pip install -e '.[bayesian]'."
            ) from None
        return _geometry_aware(keras_tuner.oracles.BayesianOptimizationOracle)(max_trials=max_trials, **common)
    if tuner == "hyperband":
        return _geometry_aware(keras_tuner.oracles.HyperbandOracle)(
            max_epochs=HYPERBAND_MAX_EPOCHS, factor=HYPERBAND_FACTOR, hyperband_iterations=1, **common
        )
    raise errors.InputError(f"Unknown tuner {tuner!r}. Known: {', '.join(TUNERS)}.")


def _check_setup(tuner_dir: str, setup: dict[str, Any]) -> None:
    """Refuses to resume a search whose setup differs; records a new one."""
    path = os.path.join(tuner_dir, SETUP_FILE)
    setup = json.loads(json.dumps(setup))  # Tuples -> lists, as read back.
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            previous = json.load(handle)
        changed = sorted(key for key in setup if key != "max_trials" and previous.get(key) != setup[key])
        if changed:
            raise errors.InputError(
                f"{tuner_dir} holds a search with a different {', '.join(changed)}; "
                "resume it with the same settings or use a new --tuner_dir."
            )
    atomic.write_text(path, json.dumps(setup, indent=2, sort_keys=True) + "\n")


def run_search(
    base_config: config_lib.ExperimentConfig,
    data_dir: str,
    tuner_dir: str,
    *,
    tuner: str = "random",
    max_trials: int = 10,
    steps_per_trial: int = 200,
    eval_steps: int | None = None,
    search_space: Mapping[str, Any] | None = None,
    objective: str = "val_loss",
    strategy: Any = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    compile_fn: Callable[[Any, config_lib.ExperimentConfig], None] | None = None,
) -> SearchResult:
    """Runs (or resumes) a hyperparameter search; see the module docstring.

    Args:
        base_config: the preset (or config) the search varies.
        data_dir: TFRecord shards (`isl convert` output).
        tuner_dir: where the search and its results live.
        tuner: "random", "bayesian" or "hyperband".
        max_trials: trials in total, resumed ones included (not hyperband,
            whose budget is one Hyperband iteration of max 3 epochs).
        steps_per_trial: training steps of a (full-length) trial.
        eval_steps: eval batches per score; default config.train.eval_batches.
        search_space: overrides of the default space (parsed JSON, see
            `hypermodel.search_space`).
        objective: "val_loss" or "NAME:min|max".
        strategy: a tf.distribute.Strategy each trial runs under, or None.
        callbacks: extra Keras callbacks for every trial's fit.
        verbose: Keras fit verbosity.
        compile_fn: compiles each trial's model; default
            `isl.train.step.compile_for_training` (tests inject others).

    Returns:
        A SearchResult; files are written by standalone and chief processes.

    Raises:
        InputError: for bad arguments or a setup differing from the one in
            `tuner_dir`.
    """
    if tuner not in TUNERS:
        raise errors.InputError(f"Unknown tuner {tuner!r}. Known: {', '.join(TUNERS)}.")
    if max_trials < 1 or steps_per_trial < 1:
        raise errors.InputError("--max_trials and --steps_per_trial must be >= 1.")
    role = role_from_environment()
    space = hypermodel_lib.search_space(base_config, search_space)
    hypermodel = hypermodel_lib.ISLHyperModel(
        base_config, space, compile_fn=compile_fn or step_lib.compile_for_training
    )
    default_values = {name: dimension.default for name, dimension in space.items()}
    reason = hypermodel.invalid_reason(default_values)
    if reason is not None:
        raise errors.InputError(f"The search space's defaults give no valid network: {reason}")
    objective_spec = parse_objective(objective)
    oracle = _make_oracle(tuner, objective_spec, max_trials, base_config.train.seed, hypermodel.invalid_reason)
    if role != "chief":
        # Loud and early: the data must serve every trial (train and eval
        # shards, sizes for the geometry of the base and default networks).
        splits = ("train", pipeline.selection_split(data_dir))  # Trials are scored on val when there is one.
        for config in (base_config, hypermodel.config_from_values(default_values)):
            pipeline.check_dataset(data_dir, config, splits)
    tuner_dir = os.path.abspath(tuner_dir)
    os.makedirs(tuner_dir, exist_ok=True)
    if role != "worker":
        _check_setup(tuner_dir, {
            "base_config": base_config.to_dict(),
            "search_space": {name: dimension.to_dict() for name, dimension in space.items()},
            "tuner": tuner, "objective": objective, "steps_per_trial": steps_per_trial, "max_trials": max_trials,
        })
    search_tuner = _make_tuner(tuner, oracle, hypermodel, tuner_dir, strategy)
    search_tuner._setup_isl(data_dir, *_trial_length(tuner, steps_per_trial), eval_steps, callbacks, verbose)
    try:
        search_tuner.search()
    except RuntimeError as error:  # Keras Tuner: too many consecutive failed trials.
        _raise_trial_error(search_tuner, tuner_dir, str(error).splitlines()[0])
        raise
    if role == "worker":
        # A worker's oracle is a client of the chief's (no trial table); the chief judges the search.
        return SearchResult(role=role, tuner_dir=tuner_dir)
    if not any(trial.status == "COMPLETED" for trial in search_tuner.oracle.trials.values()):
        _raise_trial_error(search_tuner, tuner_dir, "every trial failed")
    return _summarise(search_tuner.oracle, hypermodel, tuner_dir, role, objective_spec, tuner)


def _trial_length(tuner: str, steps_per_trial: int) -> tuple[int, int]:
    """(steps per epoch, epochs) of a full-length trial: one epoch, or Hyperband's epochs."""
    if tuner == "hyperband":
        return max(1, math.ceil(steps_per_trial / HYPERBAND_MAX_EPOCHS)), HYPERBAND_MAX_EPOCHS
    return steps_per_trial, 1


def _make_tuner(tuner: str, oracle: Any, hypermodel: Any, tuner_dir: str, strategy: Any) -> Any:
    """The Keras Tuner of `tuner` over `oracle`, keeping what `tuner_dir` already holds."""
    tuner_class: type = _HyperbandTuner if tuner == "hyperband" else _RandomTuner
    return tuner_class(
        oracle=oracle,
        hypermodel=hypermodel,
        directory=tuner_dir,
        project_name=PROJECT_NAME,
        distribution_strategy=strategy,
        overwrite=False,
    )


def _raise_trial_error(search_tuner: Any, tuner_dir: str, what: str) -> None:
    """Raises the first failed trial's error of this process, if there was one."""
    error = getattr(search_tuner, "isl_first_error", None)
    if error is None:
        return
    message = f"{tuner_dir}: {what}; the first failed trial's error: {error}"
    if isinstance(error, errors.InputError):
        raise errors.InputError(message) from None
    raise errors.RunFailed(f"{message} ({type(error).__name__}; the traceback is printed above).") from None


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def _trial_summaries(oracle: keras_tuner.Oracle, space: Mapping[str, Any]) -> tuple[TrialSummary, ...]:
    summaries = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        score = trial.score
        values = {name: trial.hyperparameters.values.get(name) for name in space}
        summaries.append(
            TrialSummary(
                trial_id=trial_id,
                status=str(trial.status),
                score=None if score is None or not math.isfinite(score) else float(score),
                values=values,
            )
        )
    return tuple(summaries)


def _summarise(
    oracle: keras_tuner.Oracle,
    hypermodel: hypermodel_lib.ISLHyperModel,
    tuner_dir: str,
    role: str,
    objective: keras_tuner.Objective,
    tuner: str,
) -> SearchResult:
    trials = _trial_summaries(oracle, hypermodel.space)
    csv_path = os.path.join(tuner_dir, TRIALS_CSV)
    atomic.write_text(csv_path, trials_csv(trials, tuple(hypermodel.space)))
    plot_path = os.path.join(tuner_dir, TRIALS_PLOT)
    atomic.write_bytes(plot_path, trials_plot_png(trials, minimize=objective.direction == "min"))
    best_trials = oracle.get_best_trials(1)
    if not best_trials or best_trials[0].score is None:
        return SearchResult(role=role, tuner_dir=tuner_dir, trials_csv_path=csv_path, plot_path=plot_path,
                            trials=trials)
    best = best_trials[0]
    best_values = {name: best.hyperparameters.values[name] for name in hypermodel.space}
    best_config = hypermodel.config_from_values(best_values)
    best_config = dataclasses.replace(best_config, name=f"{hypermodel.base_config.name}_tuned")
    best_path = os.path.join(tuner_dir, BEST_CONFIG_FILE)
    document = {
        "config": best_config.to_dict(),
        "hyperparameters": best_values,
        "objective": {"name": objective.name, "direction": objective.direction},
        "score": float(best.score),
        "trial_id": best.trial_id,
        "tuner": tuner,
        "num_trials": len(trials),
    }
    atomic.write_text(best_path, json.dumps(document, indent=2) + "\n")
    return SearchResult(
        role=role,
        tuner_dir=tuner_dir,
        best_config_path=best_path,
        trials_csv_path=csv_path,
        plot_path=plot_path,
        best_score=float(best.score),
        best_values=best_values,
        best_trial_id=best.trial_id,
        trials=trials,
    )


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def trials_csv(trials: Sequence[TrialSummary], names: Sequence[str]) -> str:
    """CSV text: trial_id, status, score, then one column per hyperparameter."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial_id", "status", "score", *names])
    for trial in trials:
        writer.writerow(
            [trial.trial_id, trial.status, "" if trial.score is None else repr(trial.score)]
            + [trial.values.get(name) for name in names]
        )
    return buffer.getvalue()


def trials_table(trials: Sequence[TrialSummary], names: Sequence[str] | None = None) -> str:
    """A fixed-width text table of the trials, for the terminal.

    Only hyperparameters that vary between trials get a column.
    """
    if names is None:
        names = list(trials[0].values) if trials else []
    varying = [name for name in names if len({json.dumps(t.values.get(name)) for t in trials}) > 1]
    header = ["trial", "status", "score", *varying]
    rows = [
        [t.trial_id, t.status, "" if t.score is None else f"{t.score:.5f}",
         *(_format_value(t.values.get(n)) for n in varying)]
        for t in trials
    ]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def trials_plot_png(trials: Sequence[TrialSummary], minimize: bool = True, width: int = 480,
                    height: int = 300) -> bytes:
    """A PNG plot: objective per trial (blue dots) and best so far (red line).

    x: trial order; y: objective, scaled to the plotted range (no text, to
    stay free of plotting libraries; the numbers are in trials.csv).
    """
    canvas = np.full((height, width, 3), 255, np.uint8)
    margin = 20
    canvas[height - margin, margin : width - margin] = 0  # x axis
    canvas[margin : height - margin, margin] = 0  # y axis
    scores = [(index, t.score) for index, t in enumerate(trials) if t.score is not None]
    if scores:
        values = np.array([score for _, score in scores], np.float64)
        low, high = float(values.min()), float(values.max())
        span = high - low or 1.0
        count = max(len(trials) - 1, 1)

        def to_pixel(index: int, score: float) -> tuple[int, int]:
            column = margin + 6 + int(round(index / count * (width - 2 * margin - 12)))
            row = height - margin - 6 - int(round((score - low) / span * (height - 2 * margin - 12)))
            return row, column

        best = None
        previous = None
        for index, score in scores:
            best = score if best is None else (min(best, score) if minimize else max(best, score))
            point = to_pixel(index, best)
            if previous is not None:
                _draw_line(canvas, previous, (previous[0], point[1]), (220, 40, 40))
                _draw_line(canvas, (previous[0], point[1]), point, (220, 40, 40))
            previous = point
        for index, score in scores:
            row, column = to_pixel(index, score)
            canvas[max(row - 2, 0) : row + 3, max(column - 2, 0) : column + 3] = (30, 80, 200)
    return tf.io.encode_png(canvas).numpy()


def _draw_line(canvas: np.ndarray, start: tuple[int, int], end: tuple[int, int], colour: tuple[int, int, int]) -> None:
    steps = max(abs(end[0] - start[0]), abs(end[1] - start[1]), 1)
    rows = np.round(np.linspace(start[0], end[0], steps + 1)).astype(int)
    columns = np.round(np.linspace(start[1], end[1], steps + 1)).astype(int)
    canvas[rows, columns] = colour
