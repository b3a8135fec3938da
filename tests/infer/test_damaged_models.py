"""Damaged model files: `isl predict` exits 2 naming the file and what to do."""

from __future__ import annotations

import os
import shutil

import pytest

from isl.cli import main
from isl.io.model_dir import ModelDir


@pytest.fixture
def model_dir(tiny_model_dir):
    """An untrained tiny model directory (the session's; tests copy it before damaging it)."""
    return tiny_model_dir


def _predict(tmp_path, capsys, *model_flags):
    code = main.run_command(["predict", *model_flags, f"--input_dir={tmp_path}", f"--output_dir={tmp_path}/out"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "overwrite_header"])
def test_a_damaged_weights_file_exits_2_naming_it(model_dir, tmp_path, capsys, damage):
    copy = str(tmp_path / "model")
    shutil.copytree(model_dir, copy)
    weights = ModelDir(copy).weights
    with open(weights, "r+b") as handle:
        if damage == "truncate":
            handle.truncate(os.path.getsize(weights) // 2)
        else:
            handle.write(b"\0" * 64)
    code, err = _predict(tmp_path, capsys, f"--model_dir={copy}")
    assert code == 2, err
    assert f"{weights}: damaged weights file" in err and "Copy it again" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [b'{"model": {"num_scales": 3', b"\xff\xfe\x00garbage"])
def test_a_damaged_config_exits_2_naming_it(model_dir, tmp_path, capsys, content):
    copy = str(tmp_path / "model")
    shutil.copytree(model_dir, copy)
    config_path = ModelDir(copy).config
    with open(config_path, "wb") as handle:
        handle.write(content)
    code, err = _predict(tmp_path, capsys, f"--model_dir={copy}")
    assert code == 2, err
    assert f"{config_path}: not valid JSON" in err and "is damaged: copy it again" in err


@pytest.mark.slow
@pytest.mark.parametrize("victim",
                         ["saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"])
def test_a_damaged_saved_model_exits_2_naming_it(model_dir, tmp_path, capsys, victim):
    export_dir = str(tmp_path / "export")
    assert main.run_command(["export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                             "--nokeras_archive"]) == 0
    path = os.path.join(export_dir, victim)
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        for offset in range(0, len(data), 13):
            data[offset] ^= 0xA5
        handle.seek(0)
        handle.write(data)
        handle.truncate(len(data) * 2 // 3)
    capsys.readouterr()
    code, err = _predict(tmp_path, capsys, f"--saved_model={export_dir}")
    assert code == 2, err
    assert f"{export_dir}: damaged SavedModel" in err and "Export it again" in err
