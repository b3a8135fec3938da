"""Issue 27: every route reads a user's own wells the same way (normalisation, channel map, regions, --set),
no flag is silently ignored, and warnings, names and start-up are honest. One test (or more) per point of the
issue; each fails on the code before it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from isl import presets
from isl.io import images
from isl.model import builder
from isl.model import saving
from tests.cli.conftest import run_isl
from tests.train.test_readout import structured_well

CHANNEL = "--channels=DAPI_CONFOCAL"


@pytest.fixture(scope="module")
def phase_model(tmp_path_factory) -> str:
    """An untrained tiny model that takes PHASE_CONTRAST only (as the shipped checkpoint does)."""
    config = presets.get_preset("tiny")
    config = dataclasses.replace(config, channels=dataclasses.replace(config.channels,
                                                                      input_modalities=("PHASE_CONTRAST",)))
    directory = str(tmp_path_factory.mktemp("phase_model"))
    saving.save_model_dir(builder.build_model(config), config, directory)
    return directory


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory) -> str:
    """An untrained U-Net regression (tiny) with target statistics, as isl train writes one."""
    config = presets.resolve_config("condition_b", recipe="unet_regression", overrides=[
        "model.output_size=32", "model.unet_filters=4", "model.unet_levels=2",
        "model.regression_target_mean=[0.1,0.1,0.1,0.1]", "model.regression_target_std=[1,1,1,1]"])
    directory = str(tmp_path_factory.mktemp("regression_model"))
    saving.save_model_dir(builder.build_model(config, None), config, directory)
    return directory


def _bright_field_well(directory: str, seed: int = 1, height: int = 40, width: int = 44) -> str:
    """The structured synthetic well (`structured_well`), its stack relabelled BRIGHTFIELD."""
    structured_well(directory, seed, height, width)
    for name in os.listdir(directory):
        if "channel-PHASE_CONTRAST" in name:
            os.rename(os.path.join(directory, name),
                      os.path.join(directory, name.replace("channel-PHASE_CONTRAST", "channel-BRIGHTFIELD")))
    return directory


@pytest.fixture(scope="module")
def bright_field(tmp_path_factory):
    root = tmp_path_factory.mktemp("bright_field")
    return [_bright_field_well(str(root / name), seed) for seed, name in ((1, "a"), (2, "b"))]


# 2. Transmitted-light modalities by name; a model reads another modality only when the user says so.

def test_a_bright_field_stack_for_a_phase_model_is_named_with_the_map_that_reads_it(phase_model, bright_field,
                                                                                  tmp_path, capsys):
    code, _, err = run_isl(["predict", f"--model_dir={phase_model}", f"--input_dir={bright_field[0]}",
                            f"--output_dir={tmp_path / 'p'}", "--noprogress"], capsys)
    assert code == 2
    assert "BRIGHTFIELD (13 z slice(s)" in err and "the model takes PHASE_CONTRAST" in err
    assert "--channel_map=BRIGHTFIELD=PHASE_CONTRAST" in err and "channels.input_modalities" in err
    assert not (tmp_path / "p").exists()
    code, out, err = run_isl(["predict", f"--model_dir={phase_model}", f"--input_dir={bright_field[0]}",
                              f"--output_dir={tmp_path / 'p'}", "--channel_map=BRIGHTFIELD=PHASE_CONTRAST", CHANNEL,
                              "--noprogress", "--json"], capsys)
    assert code == 0, err
    (well,) = json.loads(out.strip().splitlines()[-1])["wells"]
    record = json.load(open(os.path.join(well["well_dir"], "prediction.json")))
    assert record["channel_map"] == ["BRIGHTFIELD=PHASE_CONTRAST"] and record["modality"] == "PHASE_CONTRAST"
    assert "channel map BRIGHTFIELD=PHASE_CONTRAST" in out
    # isl evaluate reads the truth well with the map prediction.json recorded.
    code, out, err = run_isl(["evaluate", f"--predictions_dir={tmp_path / 'p'}", f"--truth_dir={bright_field[0]}",
                              f"--output_dir={tmp_path / 'scores'}"], capsys)
    assert code == 0 and "DAPI_CONFOCAL" in out, err


@pytest.mark.parametrize("mapping, message", [
    ("BRIGHTFIELD=NUCLEI", "--channel_map: BRIGHTFIELD=NUCLEI: NUCLEI is not a channel of the model. Valid choices: "
                           "transmitted light PHASE_CONTRAST; stains DAPI_CONFOCAL"),
    ("BRIGHTFIELD=DAPI_CONFOCAL", "BRIGHTFIELD is transmitted light; it maps only to PHASE_CONTRAST"),
    ("BRIGHTFIELD=DIC", "the model does not take DIC; map transmitted light to PHASE_CONTRAST"),
    ("BRIGHTFIELD", "is not FROM=TO"),
])
def test_a_map_to_a_channel_the_model_does_not_know_exits_2_naming_flag_value_and_choices(
        phase_model, bright_field, tmp_path, capsys, mapping, message):
    for command in (["predict", f"--output_dir={tmp_path / 'p'}", f"--input_dir={bright_field[0]}"],
                    ["readout", f"--output_dir={tmp_path / 'r'}", f"--train_dir={bright_field[0]}"]):
        code, _, err = run_isl([*command, f"--model_dir={phase_model}", f"--channel_map={mapping}", "--noprogress"],
                               capsys)
        assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "r").exists()


def test_convert_records_the_map_and_train_copies_it_into_the_model_config(bright_field, tmp_path, capsys):
    from isl.data import normalization

    records = tmp_path / "records"
    phase_only = "channels.input_modalities=[\"PHASE_CONTRAST\"]"
    code, _, err = run_isl(["convert", f"--input_dir={bright_field[0]}", f"--output_dir={records}", "--noprogress",
                            f"--set={phase_only}"], capsys)
    assert code == 2 and "--channel_map=BRIGHTFIELD=PHASE_CONTRAST" in err
    code, out, err = run_isl(["convert", f"--input_dir={bright_field[0]}", f"--output_dir={records}", "--noprogress",
                              f"--set={phase_only}", "--channel_map=BRIGHTFIELD=PHASE_CONTRAST", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["channel_map"] == ["BRIGHTFIELD=PHASE_CONTRAST"]
    config = normalization.config_for_dataset(presets.get_preset("tiny"), str(records))
    assert config.data.channel_map == ("BRIGHTFIELD=PHASE_CONTRAST",)


# 1. The read-out takes the data contract and records it; an assumed normalisation is said.

def test_readout_takes_and_records_normalization_map_and_regions(phase_model, bright_field, tmp_path, capsys):
    output = tmp_path / "readout"
    code, out, err = run_isl([
        "readout", f"--model_dir={phase_model}", f"--train_dir={bright_field[0]}", f"--eval_dir={bright_field[1]}",
        "--channel_map=BRIGHTFIELD=PHASE_CONTRAST", "--normalization=paper", "--region=0:30,:",
        "--eval_region=10:40,4:44", "--radii=1,2", "--targets=DAPI_CONFOCAL", f"--output_dir={output}",
        "--noprogress", "--json"], capsys)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["pixels"] == 30 * 44  # Fitted on the window only.
    assert summary["region"] == "0:30,0:" and summary["eval_region"] == "10:40,4:44"
    written = json.load(open(output / "config.json"))["data"]
    assert written["normalization"] == "paper" and written["channel_map"] == ["BRIGHTFIELD=PHASE_CONTRAST"]
    # Predict with the read-out: the recorded contract is applied, and the truth in the well gives a panel.
    code, out, err = run_isl(["predict", f"--model_dir={output}", f"--input_dir={bright_field[1]}",
                              f"--output_dir={tmp_path / 'p'}", "--noprogress", "--json"], capsys)
    assert code == 0, err
    (well,) = json.loads(out.strip().splitlines()[-1])["wells"]
    record = json.load(open(os.path.join(well["well_dir"], "prediction.json")))
    assert record["normalization"] == "paper" and record["channel_map"] == ["BRIGHTFIELD=PHASE_CONTRAST"]
    # 8. Error panels from a read-out model when the well holds truth.
    assert well["panels"] == {"target": "target_error_panel.png"} and record["truth_channels"] == ["DAPI_CONFOCAL"]
    import imageio.v3 as imageio

    panel = imageio.imread(os.path.join(well["well_dir"], "target_error_panel.png"))
    assert panel.ndim == 3 and panel.shape[0] > 40
    # isl calibrate reads the validation and training wells with the recorded map too (it failed on BRIGHTFIELD).
    code, out, err = run_isl(["calibrate", f"--model_dir={output}", f"--data_dir={bright_field[1]}",
                              "--region=0:40,:", f"--train_dir={bright_field[0]}", "--train_region=0:40,:",
                              "--min_pixels=500", "--noreadout_histograms"], capsys)
    assert code == 0, err
    assert "spread_scale" in out and os.path.isfile(output / "calibration.json")


def test_a_config_without_a_normalization_says_what_is_assumed(phase_model, bright_field, tmp_path, capsys):
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(phase_model, legacy)
    config = json.load(open(legacy / "config.json"))
    del config["data"]["normalization"]
    json.dump(config, open(legacy / "config.json", "w"))
    code, _, err = run_isl(["predict", f"--model_dir={legacy}", f"--input_dir={bright_field[0]}", CHANNEL,
                            "--channel_map=BRIGHTFIELD=PHASE_CONTRAST", f"--output_dir={tmp_path / 'p'}",
                            "--nopanels", "--noprogress"], capsys)
    assert code == 0 and "records no data.normalization; assuming 'none'" in err
    code, _, err = run_isl(["predict", f"--model_dir={legacy}", f"--input_dir={bright_field[0]}", CHANNEL,
                            "--set=data.channel_map=BRIGHTFIELD=PHASE_CONTRAST", "--normalization=paper",
                            f"--output_dir={tmp_path / 'p'}", "--nopanels", "--noprogress"], capsys)
    assert code == 0 and "assuming" not in err
    code, _, err = run_isl(["predict", f"--model_dir={legacy}", f"--input_dir={bright_field[0]}",
                            "--set=model.base_depth=8", f"--output_dir={tmp_path / 'q'}", "--noprogress"], capsys)
    assert code == 2 and "--set model.base_depth: a trained model's network is fixed" in err


def test_the_shipped_checkpoint_records_its_normalization():
    from tests.test_checkpoints import CHECKPOINT

    config = json.loads((CHECKPOINT / "config.json").read_text())
    # Trained on the released images, which were normalised offline: 'none'; raw data need --normalization=paper.
    assert config["data"]["normalization"] == "none"


def test_raw_camera_phase_with_plausible_statistics_now_warns():
    """A well-exposed raw 14-bit phase stack (mean 0.4 of its range, std 0.1) passed the old 0.35-0.65 check."""
    from isl.data import normalization

    stack = np.clip(np.random.default_rng(0).normal(0.4, 0.1, (3, 64, 64)), 0, 1)
    warning = normalization.check_statistics(stack, "well W", "none")
    assert warning and "--normalization=paper" in warning
    paper = normalization.normalize_stack(stack, "paper")
    assert normalization.check_statistics(paper, "well W", "paper") is None


# 3 and 4. Regions for every model kind, and flags a kind cannot honour are refused.

def test_unet_regression_honours_region_and_refuses_what_it_cannot_do(regression_model, tmp_path, capsys):
    well = str(tmp_path / "well")
    structured_well(well, 3, 96, 100)
    code, out, err = run_isl(["predict", f"--model_dir={regression_model}", f"--input_dir={well}",
                              f"--output_dir={tmp_path / 'whole'}", CHANNEL, "--noprogress", "--json"], capsys)
    assert code == 0, err
    (whole,) = json.loads(out.strip().splitlines()[-1])["wells"]
    code, out, err = run_isl(["predict", f"--model_dir={regression_model}", f"--input_dir={well}",
                              f"--output_dir={tmp_path / 'window'}", CHANNEL, "--region=40:60,50:80",
                              "--statistics=median", "--noprogress", "--json"], capsys)
    assert code == 0, err
    (window,) = json.loads(out.strip().splitlines()[-1])["wells"]
    assert set(window["files"]["DAPI_CONFOCAL"]) == {"median"}  # --statistics is honoured too.
    read = lambda entry: images.read_image(  # noqa: E731
        os.path.join(entry["well_dir"], entry["files"]["DAPI_CONFOCAL"]["median"])).astype(np.float64) / 65535
    cropped, whole_image = read(window), read(whole)
    assert cropped.shape == (20, 30)  # The window, not the full field.
    record = json.load(open(os.path.join(window["well_dir"], "prediction.json")))
    assert record["region"] == {"row_offset": 40, "column_offset": 50, "height": 20, "width": 30}
    # Read with the training patch side (32 px) of context around the window: close to the whole field's.
    assert np.abs(cropped - whole_image[40:60, 50:80]).max() < 0.05
    for flags, message in ((["--border=valid"], "--border=valid applies to models with a border"),
                           (["--statistics=std"], "--statistics=std: the U-Net regression predicts one value"),
                           (["--tile_size=266"], "--tile_size=266 does not apply to this model (unet regression)"),
                           (["--phases=1"], "--phases=1 does not apply"),
                           (["--save_calibration"], "--save_calibration does not apply"),
                           (["--region=0:200,0:10"], "valid windows lie within 0:96,0:100")):
        _assert_predict_refuses(regression_model, well, tmp_path / "refused", flags, message, capsys)
    assert not (tmp_path / "refused").exists()


def _assert_predict_refuses(model_dir: str, well: str, output, flags: list[str], message: str, capsys) -> None:
    """`isl predict` with these flags exits 2 and its error contains `message`."""
    code, _, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well}", f"--output_dir={output}",
                            "--noprogress", *flags], capsys)
    assert code == 2 and message in err, (flags, err)


def test_regression_predictions_with_truth_write_a_target_panel(regression_model, tmp_path, capsys):
    well = str(tmp_path / "well")
    structured_well(well, 3, 48, 48)
    code, out, err = run_isl(["predict", f"--model_dir={regression_model}", f"--input_dir={well}",
                              f"--output_dir={tmp_path / 'p'}", "--noprogress", "--json"], capsys)
    assert code == 0, err
    (entry,) = json.loads(out.strip().splitlines()[-1])["wells"]
    assert entry["panels"] == {"target": "target_error_panel.png"}


def test_readout_refuses_flags_it_cannot_honour(phase_model, bright_field, tmp_path, capsys):
    from isl.infer.kinds import readout as readout_kind

    assert readout_kind.KIND.unsupported(None)["tile_size"][0] == 0
    output = tmp_path / "readout"
    code, _, err = run_isl(["readout", f"--model_dir={phase_model}", f"--train_dir={bright_field[0]}", "--radii=1",
                            "--channel_map=BRIGHTFIELD=PHASE_CONTRAST", f"--output_dir={output}", "--noprogress"],
                           capsys)
    assert code == 0, err
    for flags, message in ((["--phases=1"], "--phases=1 does not apply to this model (readout)"),
                           (["--nosimplify_panels"], "--nosimplify_panels does not apply"),
                           (["--noinference_graph"], "--noinference_graph does not apply"),
                           (["--batch_size=2"], "--batch_size=2 does not apply")):
        _assert_predict_refuses(str(output), bright_field[1], tmp_path / "refused", flags, message, capsys)
    code, _, err = run_isl(["readout", f"--model_dir={phase_model}", f"--train_dir={bright_field[0]}",
                            "--channel_map=BRIGHTFIELD=PHASE_CONTRAST", "--region=0:30,50:60",
                            f"--output_dir={tmp_path / 'r2'}", "--noprogress"], capsys)
    assert code == 2 and "--region columns 50:60 fall outside the image (40x44)" in err


# 5. The train help names every recipe.

def test_train_help_names_every_recipe(capsys):
    code, out, _ = run_isl(["train", "--help"], capsys)
    flag_help = out.split("flags:", 1)[1]
    recipe_flag = flag_help.split("--recipe:")[1].split("\n  --")[0]
    assert code == 0 and "U-Net regression with MSE" in " ".join(flag_help.split())
    for name in presets.RECIPES:
        assert name in recipe_flag, name
    code, _, err = run_isl(["train", "--recipe=gpu", "--data_dir=x", "--model_dir=y"], capsys)
    assert code == 2 and "|".join(presets.RECIPES) in err


# 6. The percentile check compares with what percentile scaling produces.

def test_percentile_check_passes_an_ordinary_field_and_flags_a_dark_slice():
    from isl.data import normalization

    rng = np.random.default_rng(0)
    # A bright-field-like stack: cells darker and brighter than a background, percentile mean ~0.54, std ~0.33.
    stack = rng.beta(0.7, 0.6, size=(4, 96, 96)).astype(np.float32)
    scaled = normalization.normalize_stack(stack, "percentile")
    low_mean, high_mean, low_std, high_std = normalization.slice_statistics(scaled)
    assert 0.45 < low_mean and high_std > 0.3  # What the old check called "a mostly empty or saturated field?".
    assert normalization.check_statistics(scaled, "well W", "percentile") is None
    stack[2] *= 0.02  # One slice nearly black: after scaling over the stack it is clipped at 0.
    warning = normalization.check_statistics(normalization.normalize_stack(stack, "percentile"), "well W",
                                             "percentile")
    assert warning and "z 2: 10% clipped, std 0.00645" in warning and "3rd..99.8th percentiles" in warning


# 9. Short output names, and a quiet start-up with TF_CPP_MIN_LOG_LEVEL=2.

def test_short_names_are_written_and_evaluated(tiny_model_dir, tmp_path, capsys):
    well = str(tmp_path / "well")
    structured_well(well, 4)
    code, out, err = run_isl(["predict", f"--model_dir={tiny_model_dir}", f"--input_dir={well}", CHANNEL,
                              "--names=short", "--statistics=median,q05", f"--output_dir={tmp_path / 'p'}",
                              "--noprogress", "--json"], capsys)
    assert code == 0, err
    (entry,) = json.loads(out.strip().splitlines()[-1])["wells"]
    assert entry["files"] == {"DAPI_CONFOCAL": {"median": "DAPI_CONFOCAL_MEDIAN.png", "q05": "DAPI_CONFOCAL_Q05.png"}}
    assert entry["calibration_files"]["DAPI_CONFOCAL"]["cdf_below_true"] == "DAPI_CONFOCAL_CDF_BELOW_TRUE.tif"
    assert max(len(name) for name in os.listdir(entry["well_dir"])) < 40
    code, out, err = run_isl(["evaluate", f"--predictions_dir={tmp_path / 'p'}", f"--truth_dir={well}"], capsys)
    assert code == 0 and "DAPI_CONFOCAL" in out, err


def test_start_up_is_quiet_with_tf_cpp_min_log_level_2(tmp_path):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.getcwd())
    environment.pop("ISL_TF_LOG", None)
    completed = subprocess.run([sys.executable, "-m", "isl", "describe", "--preset=tiny"], capture_output=True,
                               text=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.strip() == "", completed.stderr


def test_children_started_quietly_print_nothing_on_stderr(capfd):
    import multiprocessing

    from isl import quiet

    context = multiprocessing.get_context("spawn")
    process = context.Process(target=os.write, args=(2, b"a TensorFlow banner\n"))
    with quiet.stderr_silenced():
        process.start()
    process.join()
    print("parent still writes", file=sys.stderr)
    assert capfd.readouterr().err == "parent still writes\n"


# 7. The U-Net's summary: statistics only of channels with labels, and what a large loss gap means.

def test_regression_target_statistics_list_only_channels_with_labels(tmp_path, monkeypatch):
    from isl.train import dense_eval
    from isl.train import state

    config = presets.resolve_config("condition_b", recipe="unet_regression")
    means = tuple(0.2 if name == "DAPI_CONFOCAL" else 0.0 for name in config.channels.output_target_channels)
    stds = tuple(0.1 if name == "DAPI_CONFOCAL" else 1.0 for name in config.channels.output_target_channels)
    monkeypatch.setattr(dense_eval, "target_statistics", lambda data_dir, config: (means, stds))
    lines = []
    state.with_target_statistics(config, str(tmp_path), str(tmp_path / "model"), lines.append)
    (line,) = lines
    assert "DAPI_CONFOCAL 0.2000 / 0.1000" in line and "NFH_CONFOCAL 0.0000" not in line
    assert "3 channel(s) without labels in the training data, left untrained: NFH_CONFOCAL, MAP2_CONFOCAL" in line


def test_a_large_loss_gap_is_explained_and_a_small_one_is_not():
    from isl.cli import train

    config = presets.resolve_config("condition_b", recipe="unet_regression")
    note = train.loss_gap_note(config, 0.8439, 21.2514)
    assert note.startswith("Note: the eval loss is 25x the training loss.")
    assert "standardized targets" in note and "moving averages" in note
    assert train.loss_gap_note(config, 0.5031, 0.7917) is None
    assert "cross-entropy" in train.loss_gap_note(presets.get_preset("tiny"), 0.1, 1.0)


def test_train_refuses_a_normalization_or_map_other_than_the_records(bright_field, tmp_path, capsys):
    records = tmp_path / "records"
    code, _, err = run_isl(["convert", f"--input_dir={bright_field[0]}", f"--output_dir={records}", "--noprogress",
                            "--normalization=paper"], capsys)
    assert code == 0, err
    for flag, message in (("--normalization=none", "--normalization=none: "),
                          ("--channel_map=BF=PHASE_CONTRAST", "--channel_map=BF=PHASE_CONTRAST: ")):
        code, _, err = run_isl(["train", f"--data_dir={records}", f"--model_dir={tmp_path / 'model'}", "--steps=1",
                                "--preset=tiny", flag, "--noprogress"], capsys)
        assert code == 2 and message in err and "records" in err, err
    assert not (tmp_path / "model").exists()
