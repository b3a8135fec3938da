"""Tests for `isl demo` (small sizes)."""

from __future__ import annotations

import json
import os

from isl.cli import main


def test_demo_generates_converts_and_feeds_the_pipeline(tmp_path, capsys):
    output = tmp_path / "demo"
    code = main.run_command(["demo", f"--output_dir={output}", "--num_wells=2", "--image_size=120",
                             "--batches=2", "--noprogress", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["convert"]["num_examples"] == {"train": 1, "eval": 1}
    assert summary["pipeline"]["input_shape"] == [16, 42, 42, 52]
    assert summary["pipeline"]["label_shape"] == [16, 8, 8, 35, 2]
    assert summary["pipeline"]["patches_per_second"] > 0
    assert os.path.isfile(output / "records" / "dataset.json")
    assert len(os.listdir(output / "raw" / "well-A1")) == 16
    assert any(str(output) in line for line in lines[:-1])
