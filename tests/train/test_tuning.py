"""Keras Tuner search on the tf.data pipeline: best config, resume, distributed chief + workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import keras_tuner
import pytest

from isl import presets
from isl import errors
from isl.cli import main
from isl.model import hypermodel
from isl.train import tuning
from tests.train import tuning_helpers

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    return tuning_helpers.tiny_tfrecords(str(tmp_path_factory.mktemp("tuning_data")))


class _CountTrainings(keras.callbacks.Callback):
    """Counts trial trainings; sends this process SIGTERM at training `interrupt_at`."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        super().__init__()
        self.trainings = 0
        self.interrupt_at = interrupt_at

    def on_train_begin(self, logs=None):
        self.trainings += 1
        if self.trainings == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGTERM)  # `isl` turns it into errors.Terminated.


def _trial_statuses(tuner_dir):
    project = os.path.join(tuner_dir, tuning.PROJECT_NAME)
    statuses = {}
    for name in sorted(os.listdir(project)):
        if name.startswith("trial_"):
            with open(os.path.join(project, name, "trial.json")) as handle:
                statuses[name] = json.load(handle)["status"]
    return statuses


def test_interrupted_search_resumes_and_writes_the_best_config(tfrecords, tmp_path):
    base = tuning_helpers.small_config()
    tuner_dir = str(tmp_path / "search")
    arguments = dict(max_trials=2, steps_per_trial=2, eval_steps=1)

    interrupter = _CountTrainings(interrupt_at=2)
    with main._sigterm_raises(), pytest.raises(errors.Terminated):  # As `isl tune` runs it.
        tuning.run_search(base, tfrecords, tuner_dir, callbacks=[interrupter], **arguments)
    assert _trial_statuses(tuner_dir) == {"trial_0": "COMPLETED", "trial_1": "RUNNING"}

    counter = _CountTrainings()
    result = tuning.run_search(base, tfrecords, tuner_dir, callbacks=[counter], **arguments)

    assert counter.trainings == 1  # Only the interrupted trial ran again.
    assert [trial.status for trial in result.trials] == ["COMPLETED", "COMPLETED"]
    assert result.best_score == min(trial.score for trial in result.trials)
    best = presets.resolve_config("paper", result.best_config_path)  # As `isl train --config` reads it.
    expected = hypermodel.ISLHyperModel(base).config_from_values(result.best_values)
    assert best.model == expected.model and best.train == expected.train
    assert "best" in os.path.basename(result.best_config_path)
    with open(result.trials_csv_path) as handle:
        assert len(handle.read().strip().splitlines()) == 3
    with open(result.plot_path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    again = _CountTrainings()
    tuning.run_search(base, tfrecords, tuner_dir, callbacks=[again], **arguments)
    assert again.trainings == 0  # A finished search stays finished.


def test_resuming_with_a_different_setup_is_refused(tmp_path):
    base = tuning_helpers.small_config()
    tuning._check_setup(str(tmp_path), {"base_config": base.to_dict(), "tuner": "random", "max_trials": 2})
    tuning._check_setup(str(tmp_path), {"base_config": base.to_dict(), "tuner": "random", "max_trials": 5})
    with pytest.raises(errors.InputError, match="different tuner"):
        tuning._check_setup(str(tmp_path), {"base_config": base.to_dict(), "tuner": "hyperband", "max_trials": 5})


def test_geometry_aware_oracle_never_samples_an_invalid_architecture():
    base = tuning_helpers.small_config()
    space = hypermodel.search_space(base, {"up_kernel": [2, 4], "upper_tower_modules": {"min": 1, "max": 6}})
    model_builder = hypermodel.ISLHyperModel(base, space)
    oracle = tuning._make_oracle(
        "random", tuning.parse_objective("val_loss"), 50, 0, model_builder.invalid_reason
    )
    hp = oracle.get_space()
    model_builder.declare_hyperparameters(hp)
    oracle.update_space(hp)
    samples = [oracle._random_values() for _ in range(30)]
    assert all(model_builder.invalid_reason(values) is None for values in samples)

    plain = keras_tuner.oracles.RandomSearchOracle(objective="val_loss", max_trials=50, seed=0)
    plain.update_space(hp)
    plain_samples = [plain._random_values() for _ in range(30)]
    assert any(model_builder.invalid_reason(values) is not None for values in plain_samples)


def test_objective_and_role_parsing():
    assert tuning.parse_objective("val_loss").direction == "min"
    assert tuning.parse_objective("val_accuracy:max").direction == "max"
    with pytest.raises(errors.InputError):
        tuning.parse_objective("val_accuracy")
    assert tuning.role_from_environment({}) == "standalone"
    environment = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    assert tuning.role_from_environment({**environment, "KERASTUNER_TUNER_ID": "chief"}) == "chief"
    assert tuning.role_from_environment({**environment, "KERASTUNER_TUNER_ID": "tuner1"}) == "worker"
    with pytest.raises(errors.InputError, match="KERASTUNER_TUNER_ID"):
        tuning.role_from_environment(environment)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "num_workers",
    [
        1,
        # Two workers on a 2-core machine take about 100 s (the chief also
        # polls its workers every 20 s at the end): slow.
        pytest.param(2, marks=pytest.mark.slow),
    ],
)
def test_distributed_search_with_a_chief_and_workers(tfrecords, tmp_path, num_workers):
    """Keras Tuner's chief/worker mechanism through `isl tune`, on localhost."""
    tuner_dir = str(tmp_path / "distributed")
    command = [
        sys.executable, "-m", "isl", "tune", f"--data_dir={tfrecords}", f"--tuner_dir={tuner_dir}",
        "--preset=tiny", *(f"--set={override}" for override in tuning_helpers.SMALL_OVERRIDES),
        f"--max_trials={num_workers}", "--steps_per_trial=2", "--eval_steps=1", "--json",
    ]
    environment = dict(
        os.environ, TF_CPP_MIN_LOG_LEVEL="3",
        KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(_free_port()),
        PYTHONPATH=REPOSITORY_ROOT,
    )
    processes = {}
    for tuner_id in ("chief", *(f"tuner{index}" for index in range(num_workers))):
        log = open(tmp_path / f"{tuner_id}.log", "w")
        processes[tuner_id] = (
            subprocess.Popen(command, env={**environment, "KERASTUNER_TUNER_ID": tuner_id},
                             stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path),
            log,
        )
        if tuner_id == "chief":
            time.sleep(2)  # Let the chief open its port first.
    deadline = time.monotonic() + 240
    try:
        for process, _ in processes.values():
            process.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for process, log in processes.values():
            if process.poll() is None:
                process.kill()
            log.close()
    logs = {tuner_id: (tmp_path / f"{tuner_id}.log").read_text() for tuner_id in processes}
    for tuner_id, (process, _) in processes.items():
        assert process.returncode == 0, f"{tuner_id}:\n{logs[tuner_id][-3000:]}"
    summary = json.loads(logs["chief"].strip().splitlines()[-1])
    assert summary["role"] == "chief" and summary["num_completed"] == num_workers
    assert os.path.exists(summary["best_config"])
    for tuner_id in processes:
        if tuner_id != "chief":
            assert json.loads(logs[tuner_id].strip().splitlines()[-1])["role"] == "worker"
    assert _trial_statuses(tuner_dir) == {f"trial_{index}": "COMPLETED" for index in range(num_workers)}


@pytest.mark.slow
def test_hyperband_search_completes_and_reuses_checkpoints(tfrecords, tmp_path):
    """One Hyperband iteration (about 80 s on 2 busy cores)."""
    result = tuning.run_search(
        tuning_helpers.small_config(), tfrecords, str(tmp_path / "hyperband"), tuner="hyperband",
        steps_per_trial=3, eval_steps=1,
    )
    assert len(result.trials) > 1
    assert all(trial.status == "COMPLETED" for trial in result.trials)
    assert os.path.exists(result.best_config_path)
