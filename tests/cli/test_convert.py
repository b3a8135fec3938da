"""Tests for `isl convert`: the happy path, vocabulary flags, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from isl.cli import main
from tests.data import test_wells
from tests.data import wellmaker


def test_converts_wells_into_shards_and_dataset_json(tmp_path, capsys):
    for index, well in enumerate(("A1", "A2", "A3")):
        wellmaker.random_well(str(tmp_path / "in" / well), num_z=3, height=20, width=24, seed=index, well=well)
    output = tmp_path / "out"
    code = main.run_command(["convert", f"--input_dir={tmp_path / 'in'}", f"--output_dir={output}",
                             "--num_shards=2", "--eval_wells=A2", "--noprogress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_examples"] == {"train": 2, "eval": 1, "val": 0}
    assert sorted(os.listdir(output)) == [
        "dataset.json", "eval-00000-of-00001.tfrecord",
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    description = json.loads((output / "dataset.json").read_text())
    assert description["image_sizes"] == {"20x24": 3} and description["channels"]["target_channels"] == [
        "DAPI_CONFOCAL", "MAP2_CONFOCAL"]
    assert [well["well"] for well in description["wells"] if well["split"] == "eval"] == ["A2"]
    assert all(len(well["source_files"]) == 5 for well in description["wells"])
    # An existing output is not replaced without --overwrite.
    assert main.run_command(["convert", f"--input_dir={tmp_path / 'in'}", f"--output_dir={output}"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_user_channel_is_accepted_through_set(tmp_path, capsys):
    directory = tmp_path / "in"
    wellmaker.random_well(str(directory), num_z=2, height=8, width=8)
    shutil.copy(directory / wellmaker.file_name("MAXPROJECT", "DAPI_CONFOCAL"),
                directory / wellmaker.file_name("MAXPROJECT", "GFAP_CONFOCAL"))
    arguments = ["convert", f"--input_dir={directory}", f"--output_dir={tmp_path / 'out'}", "--noprogress"]
    assert main.run_command(arguments) == 2
    assert "GFAP_CONFOCAL" in capsys.readouterr().err
    vocabulary = '["DAPI_CONFOCAL","MAP2_CONFOCAL","GFAP_CONFOCAL"]'
    assert main.run_command(arguments + [f"--set=channels.target_channels={vocabulary}"]) == 0
    description = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert description["channels"]["target_channels"] == ["DAPI_CONFOCAL", "MAP2_CONFOCAL", "GFAP_CONFOCAL"]


@pytest.mark.parametrize("case", sorted(test_wells.BAD_INPUTS))
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, case):
    directory = str(tmp_path / "well")
    wellmaker.random_well(directory, num_z=4, height=16, width=16)
    problem = test_wells.BAD_INPUTS[case](directory)
    output = tmp_path / "out"
    code = main.run_command(["convert", f"--input_dir={directory}", f"--output_dir={output}", "--noprogress"])
    error = capsys.readouterr().err
    assert code == 2
    assert problem in error and "Traceback" not in error
    assert not output.exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_a_disk_that_fills_during_a_record_exits_2_naming_the_file_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    """Records are written in pieces: a full disk halfway through one is exit 2 naming the shard, nothing left."""
    import errno

    from isl.data import tfrecords

    wellmaker.random_well(str(tmp_path / "in"), num_z=3, height=30, width=20)
    original = tfrecords.RecordFile.write_record

    def write_record(self, length, pieces):
        def filling():
            for index, piece in enumerate(pieces):
                if index == 3:  # Mid-record: the length and the first entries are written.
                    raise OSError(errno.ENOSPC, "No space left on device")
                yield piece
        return original(self, length, filling())

    monkeypatch.setattr(tfrecords.RecordFile, "write_record", write_record)
    output = tmp_path / "out"
    code = main.run_command(["convert", f"--input_dir={tmp_path / 'in'}", f"--output_dir={output}", "--noprogress"])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert "train-00000-of-00001.tfrecord: cannot write the record (the disk is full)" in error
    assert not output.exists()
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_region_split_holds_out_a_rectangle_of_each_well(tmp_path, capsys):
    import tensorflow as tf

    from isl.data import schema

    wellmaker.random_well(str(tmp_path / "in"), num_z=2, height=40, width=24, seed=3)
    output = tmp_path / "out"
    code = main.run_command(["convert", f"--input_dir={tmp_path / 'in'}", f"--output_dir={output}",
                             "--region=0:28,:", "--eval_region=30:,0:24", "--noprogress", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_examples"] == {"train": 1, "eval": 1, "val": 0}
    description = json.loads((output / "dataset.json").read_text())
    by_split = {well["split"]: well for well in description["wells"]}
    train = by_split["train"]
    assert (train["height"], train["width"], train["region"]) == (28, 24, "0:28,0:24")
    assert (by_split["eval"]["height"], by_split["eval"]["width"], by_split["eval"]["region"]) == (10, 24, "30:40,0:24")
    heights = []
    for split in ("train", "eval"):
        for record in tf.data.TFRecordDataset(str(output / f"{split}-00000-of-00001.tfrecord")):
            example = tf.train.Example.FromString(record.numpy())
            heights.append(example.features.feature[schema.IMAGE_HEIGHT].int64_list.value[0])
    assert heights == [28, 10]


@pytest.mark.parametrize("flags, problem", [
    (["--region=0:30,:", "--eval_region=20:40,:"], "overlaps the training region"),
    (["--eval_region=30:50,:"], "fall outside the image"),
    (["--region=0-30"], "Bad --region"),
    (["--eval_region=30:,:", "--eval_wells=B2"], "exclude each other"),
    (["--region=0:20,:", "--eval_region=30:,:", "--val_region=25:35,:"],
     "--val_region 25:35,0:24 overlaps --eval_region"),
    (["--region=0:20,:", "--eval_region=30:,:", "--val_region=15:25,:"],
     "--val_region 15:25,0:24 overlaps the training"),
    (["--val_region=30:,:"], "--val_region needs --eval_region"),
    (["--eval_region=30:,:", "--val_wells=A1"], "--val_wells and --eval_region exclude each other"),
])
def test_bad_regions_exit_2_and_write_nothing(tmp_path, capsys, flags, problem):
    wellmaker.random_well(str(tmp_path / "in"), num_z=2, height=40, width=24)
    output = tmp_path / "out"
    code = main.run_command(["convert", f"--input_dir={tmp_path / 'in'}", f"--output_dir={output}",
                             "--noprogress"] + flags)
    error = capsys.readouterr().err
    assert code == 2 and problem in error and "Traceback" not in error
    assert not output.exists()


def test_three_way_region_split_writes_a_validation_split(tmp_path, capsys):
    wellmaker.random_well(str(tmp_path / "in"), num_z=2, height=40, width=24, seed=3)
    output = tmp_path / "out"
    code = main.run_command(["convert", f"--input_dir={tmp_path / 'in'}", f"--output_dir={output}",
                             "--region=0:24,:", "--val_region=24:32,:", "--eval_region=32:,:", "--noprogress",
                             "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_examples"] == {"train": 1, "eval": 1, "val": 1}
    assert sorted(os.listdir(output)) == [
        "dataset.json", "eval-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
        "val-00000-of-00001.tfrecord"]
    description = json.loads((output / "dataset.json").read_text())
    assert description["splits"]["val"] == {"num_examples": 1, "shards": ["val-00000-of-00001.tfrecord"]}
    regions = {well["split"]: well["region"] for well in description["wells"]}
    assert regions == {"train": "0:24,0:24", "val": "24:32,0:24", "eval": "32:40,0:24"}


def test_validation_wells_are_a_third_split_and_must_not_be_evaluation_wells(tmp_path, capsys):
    for index, well in enumerate(("A1", "A2", "A3", "A4")):
        wellmaker.random_well(str(tmp_path / "in" / well), num_z=2, height=12, width=12, seed=index, well=well)
    output = tmp_path / "out"
    arguments = ["convert", f"--input_dir={tmp_path / 'in'}", f"--output_dir={output}", "--noprogress"]
    assert main.run_command(arguments + ["--eval_wells=A2,A4", "--val_wells=A4"]) == 2
    error = capsys.readouterr().err
    assert "--val_wells and --eval_wells both hold out" in error and "A4" in error and "Traceback" not in error
    assert not output.exists()
    # The default every-8th-well rule counts as the evaluation flag too.
    assert main.run_command(arguments + ["--eval_every=2", "--val_wells=A2"]) == 2
    assert "--val_wells and --eval_every=2 both hold out" in capsys.readouterr().err
    assert main.run_command(arguments + ["--val_wells=Z9"]) == 2
    assert "--val_wells names unknown well(s) Z9" in capsys.readouterr().err
    assert main.run_command(arguments + ["--eval_wells=A2", "--val_wells=A3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_examples"] == {"train": 2, "eval": 1, "val": 1}
    description = json.loads((output / "dataset.json").read_text())
    assert {well["well"]: well["split"] for well in description["wells"]} == {
        "A1": "train", "A2": "eval", "A3": "val", "A4": "train"}
