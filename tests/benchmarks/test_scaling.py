"""Tests for `isl benchmark scaling`: the mirrored wells, the per-command measurement and the refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from isl import errors
from isl.benchmarks import options as options_lib
from isl.benchmarks import scaling


def test_measure_reports_the_child_s_own_peak_and_exit_code(tmp_path):
    grab = "import numpy; a = numpy.ones(300_000_000 // 8); print(a.sum())"
    result = scaling.measure([sys.executable, "-c", grab], str(tmp_path / "log"))
    assert result["exit_code"] == 0 and 0.3 <= result["peak_rss_gb"] < 1.5 and result["cpu_seconds"] > 0
    ballast = np.ones(500_000_000 // 8)  # this process's memory must not enter a child's figure (fork keeps it)
    small = scaling.measure([sys.executable, "-c", "import sys; sys.exit(3)"], str(tmp_path / "log2"))
    assert small["exit_code"] == 3 and small["peak_rss_gb"] < 0.3  # its own peak, not the earlier child's
    assert ballast.sum() > 0


def test_scaling_refuses_missing_settings(tmp_path):
    base = dict(sample_dir=str(tmp_path), data_dir=str(tmp_path / "work"), model_dir=None)
    with pytest.raises(errors.InputError, match="--model_dir"):
        scaling.run(options_lib.BenchmarkOptions(**base))
    with pytest.raises(errors.InputError, match="unknown"):
        scaling.run(options_lib.BenchmarkOptions(**base, commands="train,import"))
    with pytest.raises(errors.InputError, match="--model_dir"):
        scaling.run(options_lib.BenchmarkOptions(**base, commands="convert,export"))
    with pytest.raises(errors.InputError, match="--unet_model_dir"):
        scaling.run(options_lib.BenchmarkOptions(**base, commands="convert,predict_unet"))
    with pytest.raises(errors.InputError, match="predict_ensemble needs --ensemble_model_dir"):
        scaling.run(options_lib.BenchmarkOptions(**base, commands="predict_ensemble", unet_model_dir="u"))
    with pytest.raises(errors.InputError, match="--sample_dir"):
        scaling.run(options_lib.BenchmarkOptions(**dict(base, sample_dir=None), commands="train"))


def test_scaling_names_the_commands_of_convert_export_and_the_unet_predict(tmp_path):
    work = str(tmp_path)
    convert, = scaling._commands("convert", 512, work, "m", 5)
    assert convert[3:] == ["convert", f"--input_dir={work}/well512", f"--output_dir={work}/convert512",
                           "--num_shards=1", "--overwrite"]
    (tmp_path / "export512").mkdir()  # An earlier package is removed: bioimage.io packages are never overwritten.
    (tmp_path / "export512.zip").write_text("")
    export, = scaling._commands("export", 512, work, "m", 5)
    assert "--format=bioimageio" in export and f"--sample_well={work}/well512" in export
    assert not (tmp_path / "export512").exists() and not (tmp_path / "export512.zip").exists()
    predict, = scaling._commands("predict_unet", 512, work, "m", 5, unet_model_dir="u")
    assert "--model_dir=u" in predict and f"--output_dir={work}/predict_unet512" in predict
    for name, option in (("predict_readout", "readout_model_dir"), ("predict_ensemble", "ensemble_model_dir")):
        predict, = scaling._commands(name, 1024, work, "m", 5, **{option: "k"})
        assert predict[3:5] == ["predict", "--model_dir=k"] and f"--output_dir={work}/{name}1024" in predict


def test_growth_lines_compare_the_two_sizes_of_one_run():
    rows = [dict(command="predict", size=1024, seconds=70.0, cpu_seconds=130.0, exit_code=0),
            dict(command="predict", size=4096, seconds=1400.0, cpu_seconds=2080.0, exit_code=0),
            dict(command="evaluate", size=1024, seconds=5.0, cpu_seconds=5.0, exit_code=0)]
    assert scaling.growth_lines(rows) == [
        "predict: 4096² / 1024² = 20.0x wall, 16.0x CPU s for 16x the pixels (over 17x in wall time)"]
