"""Tests for `isl benchmark scaling`: the mirrored wells, the per-command measurement and the refusals."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from isl import errors
from isl.benchmarks import options as options_lib
from isl.benchmarks import scaling
from isl.io import images
from tests.data import wellmaker


def test_mirror_well_reflects_every_image_to_the_size_and_keeps_the_names(tmp_path):
    stack = np.arange(13 * 6 * 5, dtype=np.uint16).reshape(13, 6, 5)
    wellmaker.write_well(str(tmp_path / "well"), stack, {"DAPI_CONFOCAL": stack[0]}, well="A4")
    scaling.mirror_well(str(tmp_path / "well"), str(tmp_path / "big"), 14)
    names = sorted(path.name for path in (tmp_path / "well").iterdir())
    assert sorted(path.name for path in (tmp_path / "big").iterdir()) == names
    first = next(name for name in names if "DAPI" in name)
    mirrored = images.read_image(str(tmp_path / "big" / first))
    assert mirrored.shape == (14, 14)
    np.testing.assert_array_equal(mirrored[:6, :5], stack[0])
    np.testing.assert_array_equal(mirrored[6:12, :5], stack[0][::-1])  # reflected about the bottom edge
    np.testing.assert_array_equal(mirrored[:6, 5:10], stack[0][:, ::-1])
    small = scaling.mirror_well(str(tmp_path / "well"), str(tmp_path / "small"), 4)
    assert images.read_image(f"{small}/{first}").shape == (4, 4)
    with pytest.raises(errors.InputError, match="no PNG or TIFF"):
        scaling.mirror_well(str(tmp_path), str(tmp_path / "none"), 8)


def test_measure_reports_the_child_s_own_peak_and_exit_code(tmp_path):
    grab = "import numpy; a = numpy.ones(300_000_000 // 8); print(a.sum())"
    result = scaling.measure([sys.executable, "-c", grab], str(tmp_path / "log"))
    assert result["exit_code"] == 0 and 0.3 <= result["peak_rss_gb"] < 1.5
    ballast = np.ones(500_000_000 // 8)  # this process's memory must not enter a child's figure (fork keeps it)
    small = scaling.measure([sys.executable, "-c", "import sys; sys.exit(3)"], str(tmp_path / "log2"))
    assert small["exit_code"] == 3 and small["peak_rss_gb"] < 0.3  # its own peak, not the earlier child's
    assert ballast.sum() > 0


def test_scaling_refuses_missing_settings(tmp_path):
    base = dict(sample_dir=str(tmp_path), data_dir=str(tmp_path / "work"), model_dir=None)
    with pytest.raises(errors.InputError, match="--model_dir"):
        scaling.run(options_lib.BenchmarkOptions(**base))
    with pytest.raises(errors.InputError, match="unknown"):
        scaling.run(options_lib.BenchmarkOptions(**base, commands="train,export"))
    with pytest.raises(errors.InputError, match="--sample_dir"):
        scaling.run(options_lib.BenchmarkOptions(**dict(base, sample_dir=None), commands="train"))
