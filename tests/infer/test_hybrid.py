"""The hybrid U-Net (`model.hybrid_features`): a frozen heads network's core embedding as extra U-Net input.

Tiny: a tiny untrained heads model (PHASE_CONTRAST) is the frozen folder, two synthetic wells, a 2-level U-Net,
two training steps. Checks that the records carry the embedding the Embedder computes, that training's pipeline
puts it after the light at the crop's pixels, that `isl predict` computes it and gives what training's view of the
same pixels gives, that the channels reach the U-Net, and the exit-2 refusals.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import pytest

from isl import errors
from isl import presets
from isl.cli import main
from isl.data import parser as parser_lib
from isl.data import pipeline
from isl.data import wells
from isl.infer import embedder as embedder_lib
from isl.infer import hybrid
from isl.io import images
from isl.model import builder
from isl.model import saving
from tests.cli.conftest import run_isl
from tests.train.test_readout import structured_well

HEIGHT, WIDTH = 72, 80
OVERRIDES = ["model.output_size=16", "model.unet_levels=2", "model.unet_filters=4", "data.crop_size=48",
             "data.patch_stride=16", "train.batch_size=4", "train.eval_every_steps=2", "train.recalibrate_batches=0",
             "train.eval_recalibrate_batches=0", "train.mixed_precision=\"\""]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(frozen folder, well a, well b, records with the embedding (train a, eval b), records without, its model)."""
    root = tmp_path_factory.mktemp("hybrid")
    config = presets.get_preset("tiny")
    config = dataclasses.replace(config, channels=dataclasses.replace(config.channels,
                                                                      input_modalities=("PHASE_CONTRAST",)))
    frozen = str(root / "frozen")
    saving.save_model_dir(builder.build_model(config), config, frozen)
    well_a, well_b = str(root / "a"), str(root / "b")
    structured_well(well_a, 1, HEIGHT, WIDTH)
    structured_well(well_b, 2, HEIGHT, WIDTH)
    for name in os.listdir(well_b):  # Another well id, so both convert together.
        os.rename(os.path.join(well_b, name), os.path.join(well_b, name.replace("well-B2", "well-B3")))
    return root, frozen, well_a, well_b


def _convert(setup, name, *extra):
    """Records of wells a (train) and b (eval), made once per name."""
    root, frozen, well_a, well_b = setup
    output = str(root / name)
    if not os.path.isdir(output):
        assert main.run_command(["convert", f"--input_dir={well_a}", f"--input_dir={well_b}", f"--output_dir={output}",
                                 "--preset=condition_b", "--eval_wells=B3", "--noprogress", *extra]) == 0
    return output


def _embedding(frozen: str, well_dir: str) -> np.ndarray:
    """The whole well's embedding by the Embedder (float32 `[H, W, E]`)."""
    model, config = saving.load_model_dir(frozen, input_size=None)
    return embedder_lib.Embedder(model, config)(wells.read_checked_well(config, well_dir).inputs)


def _hybrid_config(setup, records):
    frozen = setup[1]
    config = presets.resolve_config("condition_b", recipe="unet_regression",
                                    overrides=OVERRIDES + [f"model.hybrid_features={frozen}"])
    return hybrid.with_embedding(config, pipeline.read_description(records), records)


def test_training_batches_carry_the_embedding_of_their_pixels_after_the_light(setup, capsys):
    root, frozen, _, well_b = setup
    records = _convert(setup, "records", f"--embed_with={frozen}")
    block = json.load(open(os.path.join(records, "dataset.json")))["embedding"]
    expected = _embedding(frozen, well_b)
    size = expected.shape[-1]
    assert block["size"] == size and len(block["mean"]) == len(block["std"]) == size
    assert block["model_dir"] == os.path.abspath(frozen)
    config = _hybrid_config(setup, records)
    assert config.model.hybrid_embedding_size == size and config.model.hybrid_fingerprint == block["fingerprint"]
    # The eval split (well b, whole): fixed crops, no augmentation, so each patch's place is known.
    inputs, _ = next(iter(pipeline.build_dataset(records, config, split="eval", repeat=False, batch_size=64)))
    inputs = inputs.numpy()
    light = config.channels.num_input_features
    assert inputs.shape[-1] == light + size
    layout = parser_lib.patch_layout(config)
    padded = np.zeros((HEIGHT + 2 * layout.pad, WIDTH + 2 * layout.pad, size), np.float32)
    padded[layout.pad : layout.pad + HEIGHT, layout.pad : layout.pad + WIDTH] = expected.astype(np.float16)
    offsets = parser_lib.eval_crop_offsets(HEIGHT, WIDTH, layout).numpy()
    patches = [padded[y + row : y + row + layout.patch_size, x + column : x + column + layout.patch_size]
               for y, x in offsets for row, column in layout.patch_offsets]
    np.testing.assert_array_equal(inputs[: len(patches), ..., light:], np.stack(patches))
    assert np.ptp(inputs[..., light:]) > 0


@pytest.fixture(scope="module")
def trained(setup):
    """(records with the embedding, a hybrid trained 2 steps on them)."""
    root, frozen, _, _ = setup
    records = _convert(setup, "records", f"--embed_with={frozen}")
    model_dir = str(root / "model")
    code = main.run_command(["train", f"--data_dir={records}", f"--model_dir={model_dir}", "--preset=condition_b",
                             "--recipe=unet_regression", "--steps=2", "--noprogress",
                             f"--set=model.hybrid_features={frozen}", *[f"--set={item}" for item in OVERRIDES]])
    assert code == 0
    return records, model_dir


def test_predict_computes_the_embedding_and_matches_training_s_view(setup, trained, capsys):
    root, frozen, _, well_b = setup
    records, model_dir = trained
    saved = json.load(open(os.path.join(model_dir, "config.json")))["model"]
    assert saved["hybrid_features"] == os.path.abspath(frozen) and saved["hybrid_embedding_size"] > 0
    code, out, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well_b}",
                              f"--output_dir={root / 'pred'}", "--noprogress", "--nopanels", "--json"], capsys)
    assert code == 0, err
    (well,) = json.loads(out.strip().splitlines()[-1])["wells"]
    files = sorted(name for name in os.listdir(well["well_dir"]) if "DAPI" in name and "MEDIAN" in name)
    predicted = images.read_image(os.path.join(well["well_dir"], files[0])).astype(np.float32) / 65535
    # Training's view: the eval record of well b (its stored float16 embedding), as keep_best scores it.
    from isl.train import dense_eval

    model, config = saving.load_model_dir(model_dir, input_size=None)
    (image,) = dense_eval.load_split_images(records, config)
    assert image.embedding is not None and image.embedding.shape == (HEIGHT, WIDTH, saved["hybrid_embedding_size"])
    from isl.infer import regression

    column = config.channels.output_target_channels.index("DAPI_CONFOCAL")
    view = regression.predict_tiled(model, image.stack, config, embedding=image.embedding)[..., column]
    np.testing.assert_allclose(predicted, view, atol=2e-3)
    # The extra channels reach the U-Net: another embedding gives another prediction.
    other = regression.predict_tiled(model, image.stack, config, embedding=image.embedding[::-1])[..., column]
    assert np.abs(other - view).max() > 1e-3
    # As an ensemble member (or under --tta): the same pixels.
    from isl.infer.kinds import registry

    predictor = registry.load_predictor(model_dir=model_dir)
    member, _ = predictor.kind.predict_window(predictor, image.stack, (0, HEIGHT, 0, WIDTH), ["DAPI_CONFOCAL"])
    np.testing.assert_allclose(member[..., 0], predicted, atol=2e-3)
    # isl calibrate fits it like the regression, and predict then gives it a distribution.
    code, _, err = run_isl(["calibrate", f"--model_dir={model_dir}", f"--data_dir={well_b}", "--region=40:72,0:80",
                            "--train_region=0:40,0:80", "--channels=DAPI_CONFOCAL", "--min_pixels=100"], capsys)
    assert code == 0, err
    code, out, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well_b}",
                              f"--output_dir={root / 'pred_cal'}", "--noprogress", "--nopanels", "--json",
                              "--statistics=median,q05,q95", "--channels=DAPI_CONFOCAL"], capsys)
    assert code == 0, err
    (well,) = json.loads(out.strip().splitlines()[-1])["wells"]
    assert sum("Q05" in name for name in os.listdir(well["well_dir"])) == 1


def test_the_hybrid_refuses_records_without_the_embedding_and_a_missing_or_changed_frozen_folder(setup, trained,
                                                                                                capsys, tmp_path):
    root, frozen, _, well_b = setup
    plain = _convert(setup, "plain_records")
    code, _, err = run_isl(["train", f"--data_dir={plain}", f"--model_dir={tmp_path / 'm'}", "--preset=condition_b",
                            "--recipe=unet_regression", "--steps=1", "--noprogress",
                            f"--set=model.hybrid_features={frozen}", *[f"--set={item}" for item in OVERRIDES]], capsys)
    assert code == 2 and "carry no embedding" in err and "--embed_with" in err
    assert not (tmp_path / "m").exists()
    code, _, err = run_isl(["convert", f"--input_dir={well_b}", f"--output_dir={tmp_path / 'r'}",
                            "--preset=condition_b", f"--embed_with={tmp_path / 'nothing'}", "--noprogress"], capsys)
    assert code == 2 and "missing or not a model folder" in err and not (tmp_path / "r").exists()
    # A trained hybrid whose frozen folder changed, then went missing (a copy of both, the copy named).
    copy, model_dir = str(tmp_path / "frozen_copy"), str(tmp_path / "model")
    shutil.copytree(frozen, copy)
    shutil.copytree(trained[1], model_dir, ignore=shutil.ignore_patterns("calibration.json"))
    config_path = os.path.join(model_dir, "config.json")
    saved = json.load(open(config_path))
    saved["model"]["hybrid_features"] = copy
    json.dump(saved, open(config_path, "w"))
    code, _, err = run_isl(["predict", f"--model_dir={model_dir}", f"--input_dir={well_b}",
                            f"--output_dir={tmp_path / 'p0'}", "--noprogress", "--nopanels"], capsys)
    assert code == 0, err
    model, config = saving.load_model_dir(copy, input_size=None)
    keras.utils.set_random_seed(5)
    saving.save_model_dir(builder.build_model(config), config, copy)  # Other (random) weights.
    arguments = ["predict", f"--model_dir={model_dir}", f"--input_dir={well_b}", f"--output_dir={tmp_path / 'p'}",
                 "--noprogress"]
    code, _, err = run_isl(arguments, capsys)
    assert code == 2 and "changed since the hybrid was made" in err and not (tmp_path / "p").exists()
    shutil.rmtree(copy)
    code, _, err = run_isl(arguments, capsys)
    assert code == 2 and "missing or not a model folder" in err
    # Records embedded with another folder than the one named.
    code, _, err = run_isl(["train", f"--data_dir={trained[0]}",
                            f"--model_dir={tmp_path / 'm2'}", "--preset=condition_b", "--recipe=unet_regression",
                            "--steps=1", "--noprogress", f"--set=model.hybrid_features={model_dir}",
                            *[f"--set={item}" for item in OVERRIDES]], capsys)
    assert code == 2 and "fingerprints differ" in err


def test_a_frozen_network_with_other_z_values_is_refused(setup):
    from isl.io import calibration_file

    frozen = setup[1]
    description = {"embedding": {"model_dir": frozen, "fingerprint": calibration_file.fingerprint(frozen), "size": 2,
                                 "num_z_values": 13, "mean": [0.0, 0.0], "std": [1.0, 1.0]}}
    config = presets.resolve_config("condition_b", recipe="unet_regression",
                                    overrides=OVERRIDES + [f"model.hybrid_features={frozen}"])
    with pytest.raises(errors.InputError, match="takes 13 z values"):
        hybrid.with_embedding(config, description, "records")
    description["embedding"]["num_z_values"] = 26
    assert hybrid.with_embedding(config, description, "records").model.hybrid_embedding_size == 2


def test_a_hybrid_is_not_packaged(tmp_path, capsys):
    config = presets.resolve_config("condition_b", recipe="unet_regression", overrides=OVERRIDES + [
        "model.hybrid_features=/elsewhere/frozen", "model.hybrid_embedding_size=2",
        "model.hybrid_embedding_mean=[0,0]", "model.hybrid_embedding_std=[1,1]",
        "model.regression_target_mean=[0.1,0.1,0.1,0.1]", "model.regression_target_std=[1,1,1,1]"])
    saving.save_model_dir(builder.build_model(config, None), config, str(tmp_path / "m"))
    code, _, err = run_isl(["export", f"--model_dir={tmp_path / 'm'}", f"--export_dir={tmp_path / 'e'}",
                            "--format=bioimageio"], capsys)
    assert code == 2 and "hybrid U-Net" in err and "no bioimage.io package" in err
    assert not (tmp_path / "e").exists()


def test_a_hybrid_member_has_no_graph_form_so_its_ensemble_export_is_refused():
    """The regression kind's graph is the U-Net alone; a hybrid's input also needs the frozen core's embedding, so
    the kind refuses instead of exporting a graph fed the wrong channels."""
    import types

    from isl.infer.kinds import regression as regression_kind

    predictor = types.SimpleNamespace(
        source="/models/hybrid",
        config=types.SimpleNamespace(model=types.SimpleNamespace(hybrid_features="/models/frozen")))
    with pytest.raises(errors.InputError, match="hybrid U-Net .* no graph form"):
        regression_kind.KIND.member_graph(predictor, ["DAPI_CONFOCAL"], with_distribution=False)
