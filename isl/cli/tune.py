"""`isl tune`: Search block hyperparameters with Keras Tuner."""

from __future__ import annotations

from typing import Any

SUMMARY = "Search block hyperparameters with Keras Tuner."
DESCRIPTION = """
Search the network's hyperparameters with Keras Tuner, as the paper's authors
did with Hypertune: base depth, expansion factor, projection width, kernels,
activation, modules per tower, upper-tower length and learning rate (defaults
around --preset; see `isl.model.hypermodel`). Each trial trains on the train
shards of --data_dir for --steps_per_trial steps and is scored on the validation (val-*, from
`isl convert --val_wells/--val_region`) or, without them, the eval
shards. Running the same command again resumes the search (finished trials
are kept). SIGTERM stops it within a training step or two and exits with code 143:
finished trials stay, and the running one starts again on resume. At the end it
prints a table of the trials and writes, in --tuner_dir: best_config.json (for
`isl train --config=...`), trials.csv and trials.png.

--search_space is JSON over the defaults, e.g.
  '{"base_depth": [200, 400], "learning_rate": {"min": 1e-5, "max": 1e-3, "sampling": "log"},
    "upper_tower_modules": 14}'
(a list is a choice, an object with min/max a range, a value is fixed).

Distributed search: run the same command with KERASTUNER_TUNER_ID=chief (the
oracle, trains nothing) and KERASTUNER_TUNER_ID=tuner0, tuner1, ... on the
workers, all with KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT of the chief.

Example:
  isl tune --data_dir=data/tfrecords --tuner_dir=tuning/tiny --preset=tiny --max_trials=20 --steps_per_trial=500
"""
# After SIGTERM, a watcher ends the command this long after the signal if the
# main thread is still inside one native call (a tile run, a training step).
SIGTERM_GRACE_SECONDS = 10.0


# Folders this command writes (isl.cli.main removes them when a failed run leaves them empty).
OUTPUT_FLAGS = ("tuner_dir",)


def define_flags(flag_values: Any) -> None:
    from absl import flags

    flags.DEFINE_string("data_dir", None, "TFRecord shards written by `isl convert`.", flag_values=flag_values)
    flags.DEFINE_string("tuner_dir", None, "Directory of the search (resumed if it exists).", flag_values=flag_values)
    flags.DEFINE_string("preset", "paper", "Preset the search varies.", flag_values=flag_values)
    flags.DEFINE_string("config", None, "JSON config layered over the preset.", flag_values=flag_values)
    flags.DEFINE_multi_string("set", [], "Config override section.key=value (repeatable).", flag_values=flag_values)
    flags.DEFINE_enum("tuner", "random", ["random", "bayesian", "hyperband"], "Search algorithm.",
                      flag_values=flag_values)
    flags.DEFINE_integer("max_trials", 10, "Trials in total (resumed ones count; not hyperband).",
                         flag_values=flag_values)
    flags.DEFINE_integer("steps_per_trial", 200, "Training steps of a full-length trial.", flag_values=flag_values)
    flags.DEFINE_integer("eval_steps", None, "Eval batches per score (default: train.eval_batches).",
                         flag_values=flag_values)
    flags.DEFINE_string("search_space", None, "JSON (or @FILE) overriding the default search space.",
                        flag_values=flag_values)
    flags.DEFINE_string("objective", "val_loss", "Metric to optimise: NAME or NAME:min|max.", flag_values=flag_values)
    flags.DEFINE_string("strategy", "default", "tf.distribute strategy of each trial: default or mirrored.",
                        flag_values=flag_values)


def _read_search_space(text: str | None) -> dict[str, Any] | None:
    import json

    from isl import errors

    if not text:
        return None
    source = "--search_space"
    if text.startswith("@"):
        source = text[1:]
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise errors.InputError(f"{source}: cannot read the search space ({error}).") from None
    try:
        space = json.loads(text)
    except json.JSONDecodeError as error:
        raise errors.InputError(f"{source}: not valid JSON ({error}).") from None
    if not isinstance(space, dict):
        raise errors.InputError(f"{source}: the search space must be a JSON object.")
    return space


def stopped_hint(flag_values: Any) -> str:
    """Where things stand after SIGTERM (exit code 143)."""
    return (f"Finished trials are kept in {flag_values['tuner_dir'].value}. Run the same command to "
            "continue the search; the trial in progress starts again from its beginning.")


def run(flag_values: Any, positional: list[str]) -> dict[str, Any]:
    import os

    from isl import presets
    from isl import errors
    from isl.train import tuning

    if positional:
        raise errors.InputError(f"Unexpected arguments: {' '.join(positional)}")
    for name in ("data_dir", "tuner_dir"):
        if not flag_values[name].value:
            raise errors.InputError(f"--{name} is required.")
    role = tuning.role_from_environment()
    if role != "chief" and not os.path.isdir(flag_values.data_dir):
        raise errors.InputError(f"--data_dir {flag_values.data_dir}: no such directory.")
    base = presets.resolve_config(flag_values.preset, flag_values.config, flag_values.set)
    space = _read_search_space(flag_values.search_space)
    strategy = None
    if flag_values.strategy != "default":
        from isl.train import strategy as strategy_lib

        strategy = strategy_lib.make_strategy(flag_values.strategy)
    print(f"Searching ({flag_values.tuner}, {role}) from preset {base.name}; results in {flag_values.tuner_dir}",
          flush=True)
    progress = _trial_progress(flag_values.max_trials if flag_values.tuner != "hyperband" else None)
    result = tuning.run_search(
        base,
        flag_values.data_dir,
        flag_values.tuner_dir,
        tuner=flag_values.tuner,
        max_trials=flag_values.max_trials,
        steps_per_trial=flag_values.steps_per_trial,
        eval_steps=flag_values.eval_steps,
        search_space=space,
        objective=flag_values.objective,
        strategy=strategy,
        callbacks=[progress],
    )
    progress.close()
    summary: dict[str, Any] = {"role": result.role, "tuner_dir": result.tuner_dir}
    if result.role == "worker":
        print(f"Worker finished; the chief writes the results in {result.tuner_dir}")
        return summary
    print(tuning.trials_table(result.trials))
    if result.best_config_path:
        print(f"Best trial {result.best_trial_id}: {flag_values.objective} = {result.best_score:.5f}")
        print(f"Best config: {result.best_config_path}  (isl train --config={result.best_config_path})")
    else:
        print("No trial completed; no best config written.")
    print(f"Trials: {result.trials_csv_path}, plot: {result.plot_path}")
    summary.update(
        best_config=result.best_config_path,
        trials_csv=result.trials_csv_path,
        plot=result.plot_path,
        best_score=result.best_score,
        best_trial_id=result.best_trial_id,
        best_hyperparameters=result.best_values,
        num_trials=len(result.trials),
        num_completed=sum(trial.status == "COMPLETED" for trial in result.trials),
    )
    return summary


def _trial_progress(total: int | None) -> Any:
    """A Keras callback counting finished trials on a progress bar."""
    import keras

    from isl.progress import Progress

    class TrialProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.progress = Progress(total, label="trials")

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            loss = (logs or {}).get("val_loss")
            self.progress.update(1, postfix="" if loss is None else f"val_loss {loss:.4f}")

        def close(self) -> None:
            self.progress.close()

    return TrialProgress()
