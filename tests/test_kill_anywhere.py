"""Kill anywhere, lose nothing but the interval: SIGKILL `isl train`, `tune`, `convert`, `predict`, `export`.

Each command runs as a subprocess (`tests/kill_driver.py`, which can stop it
inside a write so the kill lands there) and is killed with SIGKILL; the next
start must find the newest complete checkpoint (never a partial one), with
its step and optimizer state, the finished trials, or the previous output
untouched. Slow: every start imports TensorFlow and builds a model.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.train import tuning_helpers
from tests.train.conftest import FAST_OVERRIDES, write_records

pytestmark = pytest.mark.slow

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Run:
    """One `isl` subprocess under the kill driver."""

    def __init__(self, tmp_path, arguments: list[str], hook: str = "", report: str | None = None) -> None:
        self.marker = str(tmp_path / f"marker-{time.monotonic_ns()}")
        self.log = str(tmp_path / f"log-{time.monotonic_ns()}")
        environment = {**os.environ, "PYTHONPATH": REPOSITORY_ROOT, "ISL_HOOK": hook, "ISL_MARKER": self.marker,
                       "ISL_REPORT": report or "", "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.handle = open(self.log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "tests.kill_driver", *arguments], cwd=REPOSITORY_ROOT,
                                        env=environment, stdout=self.handle, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with open(self.log) as handle:
            return handle.read()

    def kill_at_hook(self, timeout: float = 1800) -> None:
        """SIGKILLs the process once its hook has stopped it."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.marker):
            if self.process.poll() is not None:
                raise AssertionError(f"exited ({self.process.returncode}) before its hook:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"hook not reached:\n{self.output()}")
            time.sleep(0.1)
        self.kill()

    def kill_after(self, seconds: float) -> bool:
        """SIGKILLs the process after `seconds` unless it ended; True if killed."""
        try:
            self.process.wait(timeout=seconds)
            self.handle.close()
            return False
        except subprocess.TimeoutExpired:
            self.kill()
            return True

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.handle.close()
        assert self.process.returncode == -signal.SIGKILL

    def wait(self, timeout: float = 1800) -> int:
        code = self.process.wait(timeout=timeout)
        self.handle.close()
        return code


def _checkpoint_steps(model_dir: str) -> list[int]:
    from isl.train import resilience

    candidates = resilience.checkpoint_candidates(os.path.join(model_dir, "checkpoints"))
    return sorted(int(p.rsplit("-", 1)[1]) for p in candidates)


def _tree(path: str) -> dict[str, str]:
    """sha256 of every file under `path`, leaving out `.tmp-*` leftovers of a killed writer."""
    digests = {}
    for root, folders, names in os.walk(path):
        folders[:] = [folder for folder in folders if not folder.startswith(".tmp-")]
        for name in names:
            if name.startswith(".tmp-"):
                continue
            with open(os.path.join(root, name), "rb") as handle:
                digests[os.path.relpath(os.path.join(root, name), path)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def _slot_sums(model_dir: str, step: int) -> list[float]:
    """Sorted sums of |value| of the Adam slots stored in checkpoint `step` (read before a run rotates it away)."""
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"))
    return sorted(
        float(np.abs(reader.get_tensor(name)).sum())
        for name, shape in reader.get_variable_to_shape_map().items()
        if name.startswith("optimizer/_variables/") and len(shape) > 0
    )


def _check_report(report: str, expected_step: int, expected_sums: list[float]) -> None:
    """The resumed run restored `expected_step` and exactly that checkpoint's optimizer state."""
    import numpy as np

    with open(report) as handle:
        restored = json.load(handle)
    assert restored["prefix"].endswith(f"ckpt-{expected_step}") and restored["step"] == expected_step
    assert len(expected_sums) == len(restored["slot_sums"]) > 0
    np.testing.assert_allclose(restored["slot_sums"], expected_sums, rtol=1e-6)


def test_train_killed_anywhere_resumes_from_the_newest_complete_checkpoint(tmp_path):
    from isl import presets

    records = write_records(str(tmp_path), 3, 0, presets.resolve_config("tiny").channels)
    model_dir = str(tmp_path / "model")
    steps = 60
    arguments = ["train", f"--data_dir={records}", f"--model_dir={model_dir}", "--preset=tiny", f"--steps={steps}",
                 "--noprogress", "--checkpoint_every_steps=2", "--set=train.eval_every_steps=20",
                 *[f"--set={override}" for override in FAST_OVERRIDES if "every_steps" not in override]]

    # 1. Killed inside TensorFlow's checkpoint writer at the 3rd save (step 6).
    Run(tmp_path, arguments, hook="checkpoint_merge:3").kill_at_hook()
    assert glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-6_temp"))  # The partial checkpoint.
    assert _checkpoint_steps(model_dir) == [2, 4]

    # 2. Killed while model.weights.h5 is half-written (1st write of the resumed run, step 6).
    report = str(tmp_path / "report.json")
    expected = _slot_sums(model_dir, 4)
    run = Run(tmp_path, arguments, hook="weights_write:1", report=report)
    run.kill_at_hook()
    assert re.search(r"Resuming .* from step 4 ", run.output())
    _check_report(report, 4, expected)
    assert not glob.glob(os.path.join(model_dir, "checkpoints", "*_temp"))  # Partial files removed.
    import h5py

    with h5py.File(os.path.join(model_dir, "model.weights.h5")):
        pass  # The previous weights, whole (the half file lies under a temporary name).

    # 3. Killed at random moments; each next start resumes from the newest complete checkpoint.
    generator = random.Random(17)
    for _ in range(3):
        newest = _checkpoint_steps(model_dir)[-1]
        expected = _slot_sums(model_dir, newest)
        os.remove(report) if os.path.exists(report) else None
        run = Run(tmp_path, arguments, report=report)
        killed = run.kill_after(generator.uniform(8.0, 30.0))
        if os.path.exists(report):  # The run got as far as restoring.
            _check_report(report, newest, expected)
            assert f"from step {newest} " in run.output()
        if not killed:
            break

    # 4. The last start finishes the run.
    newest = _checkpoint_steps(model_dir)[-1]
    expected = _slot_sums(model_dir, newest)
    run = Run(tmp_path, arguments, report=report)
    assert run.wait() == 0, run.output()
    if newest < steps:
        _check_report(report, newest, expected)
        assert f"(resumed from step {newest})" in run.output()
    assert _checkpoint_steps(model_dir)[-1] == steps
    assert not [name for name in os.listdir(model_dir) if name.startswith(".tmp-")]


def test_tune_killed_keeps_its_finished_trials(tmp_path):
    records = tuning_helpers.tiny_tfrecords(str(tmp_path))
    tuner_dir = str(tmp_path / "search")
    arguments = ["tune", f"--data_dir={records}", f"--tuner_dir={tuner_dir}", "--preset=tiny", "--max_trials=3",
                 "--steps_per_trial=2", "--eval_steps=1", *[f"--set={o}" for o in tuning_helpers.SMALL_OVERRIDES]]
    trial_0 = os.path.join(tuner_dir, "search", "trial_0", "trial.json")

    def status(path):
        try:
            with open(path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    run = Run(tmp_path, arguments)
    deadline = time.monotonic() + 1800
    while (status(trial_0) or {}).get("status") != "COMPLETED":
        assert run.process.poll() is None and time.monotonic() < deadline, run.output()
        time.sleep(0.2)
    run.kill_after(random.Random(17).uniform(0.0, 2.0))
    finished = status(trial_0)

    run = Run(tmp_path, arguments)
    assert run.wait() == 0, run.output()
    assert status(trial_0)["score"] == finished["score"]
    assert status(trial_0)["hyperparameters"] == finished["hyperparameters"]
    with open(os.path.join(tuner_dir, "trials.csv")) as handle:
        rows = handle.read().strip().splitlines()[1:]
    assert len(rows) == 3 and all(",COMPLETED," in row for row in rows)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An (untrained) tiny model directory and one synthetic well."""
    from isl import presets
    from isl.data import synthetic
    from isl.model import builder, saving

    root = tmp_path_factory.mktemp("kill_outputs")
    config = presets.resolve_config("tiny")
    model_dir = str(root / "model")
    saving.save_model_dir(builder.build_model(config), config, model_dir)
    wells = str(root / "wells")
    synthetic.write_synthetic_dataset(wells, num_wells=2, size=160, num_z=13, seed=0)
    return model_dir, wells


@pytest.mark.parametrize("hook", ["before_replace", "after_aside", "random"])
def test_convert_predict_export_killed_leave_the_previous_output(tmp_path, tiny_model, hook):
    from isl.io import atomic

    model_dir, wells = tiny_model
    first_well = sorted(glob.glob(os.path.join(wells, "*")))[0]
    commands = {
        "convert": ["convert", f"--input_dir={wells}", "--preset=tiny", "--overwrite", "--eval_every=2",
                    "--noprogress", f"--output_dir={tmp_path / 'records'}"],
        "predict": ["predict", f"--model_dir={model_dir}", f"--input_dir={first_well}", "--noprogress",
                    f"--output_dir={tmp_path / 'predictions'}"],
        "export": ["export", f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'export'}"],
    }
    for name, arguments in commands.items():
        output = arguments[-1].split("=", 1)[1]
        first = Run(tmp_path, arguments)
        assert first.wait() == 0, first.output()
        target = output if name != "predict" else os.path.join(output, os.listdir(output)[0])
        before = _tree(output)
        if hook == "random":
            Run(tmp_path, arguments).kill_after(random.Random(name).uniform(3.0, 25.0))
        else:
            Run(tmp_path, arguments, hook=f"{hook}:{target}").kill_at_hook()
        if hook == "after_aside":
            assert not os.path.exists(target)  # The one window between two renames ...
            assert atomic.recover_previous(target)  # ... which the next start (or this) undoes.
        # Untouched. A random kill may also land after the new output was in
        # place, whose files have the same names (timestamps and timings differ).
        after = _tree(output)
        if hook == "random":
            assert after.keys() == before.keys(), name
        else:
            assert after == before, name
        again = Run(tmp_path, arguments)
        assert again.wait() == 0, again.output()
        assert _tree(output).keys() == before.keys(), name
        leftovers = glob.glob(os.path.join(os.path.dirname(target), ".tmp-*")) + glob.glob(target + ".old-*")
        assert leftovers == [], name
