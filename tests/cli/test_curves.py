"""Tests for `isl curves` and `isl.eval.curves`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isl.cli import main
from isl.eval import curves


def _fake_run(directory, losses, start=10, every=10):
    import tensorflow as tf

    from isl.train import callbacks

    writer = tf.summary.create_file_writer(str(directory / "logs" / "train"))
    with writer.as_default():
        for index, value in enumerate(losses):
            callbacks.write_scalar("loss", value, start + every * index)
            callbacks.write_scalar("steps_per_second", 0.2, start + every * index)
    writer.flush()


def test_reads_scalars_and_smooths(tmp_path):
    _fake_run(tmp_path / "a", [1.0, 0.8, 0.6, 0.4])
    steps, values = curves.read_scalars(str(tmp_path / "a"))
    np.testing.assert_array_equal(steps, [10, 20, 30, 40])
    np.testing.assert_allclose(values, [1.0, 0.8, 0.6, 0.4], rtol=1e-6)
    np.testing.assert_allclose(curves.smooth(values, 2), [1.0, 0.9, 0.7, 0.5], rtol=1e-6)
    with pytest.raises(Exception, match="no scalar named 'head_x'"):
        curves.read_scalars(str(tmp_path / "a"), "head_x")


def test_isl_curves_draws_two_runs(tmp_path, capsys):
    _fake_run(tmp_path / "paper", [1.0, 0.7, 0.5])
    _fake_run(tmp_path / "unet", [1.0, 0.9, 0.85])
    output = tmp_path / "figures" / "curves.png"
    code = main.run_command(["curves", f"--model_dir={tmp_path / 'paper'}", f"--model_dir={tmp_path / 'unet'}",
                             "--name=ISL", "--name=U-Net", "--smooth=1", f"--output={output}", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["final"] == pytest.approx({"ISL": 0.5, "U-Net": 0.85})
    from PIL import Image

    figure = np.asarray(Image.open(output))
    assert figure.shape == (420, 720, 3)
    for colour in curves.COLOURS[:2]:  # One line per run.
        assert (figure == colour).all(axis=-1).sum() > 50
    assert (tmp_path / "figures" / "curves.csv").read_text().count("\n") == 7
    # Bad input: exit 2, no figure.
    assert main.run_command(["curves", f"--model_dir={tmp_path / 'missing'}", f"--output={tmp_path / 'x.png'}"]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
