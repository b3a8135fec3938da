"""The data contract every command shares: one set of flags for how a well's files are read.

`--normalization`, `--channel_map`, `--set`, `--region` and `--eval_region`
mean the same in `isl convert`, `train`, `readout`, `predict`, `evaluate` and
`export`. For a trained model the values come from its config.json
(`data.normalization`, `data.channel_map`), where `isl train` and `isl
readout` record them; a flag overrides the recorded value, and a value that
is neither recorded nor given is assumed (`none`, no map) with one line on
stderr saying so. The library never reads flags: these helpers turn them into
an `ExperimentConfig` and region tuples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

NORMALIZATION_HELP = (
    "Transmitted-light normalisation of the inputs: none (value / max), paper (per slice mean 0.5, std 0.1156), "
    "percentile (3rd..99.8th percentile -> 0..1). Default: the model's data.normalization from its config.json "
    "(recorded by isl train / isl readout); when config.json has no such entry, 'none' is assumed and said."
)
CHANNEL_MAP_HELP = (
    "FROM=TO[,FROM=TO...]: read files of channel FROM as the model's channel TO, e.g. BRIGHTFIELD=PHASE_CONTRAST "
    "(a bright-field stack for a phase-contrast model) or HOECHST=DAPI_CONFOCAL. Transmitted light maps only to the "
    "model's transmitted-light modality, stains only to its stains. Default: the model's data.channel_map."
)
SET_HELP = ("Config override section.key=value (repeatable). For a trained model only data.* keys and "
            "channels.input_modalities may be set (its network is fixed).")
REGION_HELP = "Window r0:r1,c0:c1 of every well (image pixels, ends exclusive; an empty end means the edge)."

# Keys --set may change on a trained model: how files are read, not what the network is.
MODEL_SETTABLE = ("data.", "channels.input_modalities")


def define(flag_values: Any, names: tuple[str, ...], region_help: str = REGION_HELP,
           eval_region_help: str = "Score only this window r0:r1,c0:c1 of every evaluation well.") -> None:
    """Defines the data-contract flags `names` (normalization, channel_map, set, region, eval_region).

    They are listed in `isl COMMAND --help` with the calling command's own flags.
    """
    from absl import flags

    module_name = sys._getframe(1).f_globals["__name__"]

    if "normalization" in names:
        flags.DEFINE_enum("normalization", None, ["none", "paper", "percentile"], NORMALIZATION_HELP,
                          flag_values=flag_values, module_name=module_name)
    if "channel_map" in names:
        flags.DEFINE_list("channel_map", [], CHANNEL_MAP_HELP, flag_values=flag_values, module_name=module_name)
    if "set" in names:
        flags.DEFINE_multi_string("set", [], SET_HELP, flag_values=flag_values, module_name=module_name)
    if "region" in names:
        flags.DEFINE_string("region", None, region_help, flag_values=flag_values, module_name=module_name)
    if "eval_region" in names:
        flags.DEFINE_string("eval_region", None, eval_region_help, flag_values=flag_values, module_name=module_name)


def _value(flag_values: Any, name: str) -> Any:
    return flag_values[name].value if name in flag_values else None


def recorded_data(config_path: str) -> dict[str, Any]:
    """The `data` section exactly as a config.json records it ({} when absent or unreadable)."""
    try:
        with open(config_path, encoding="utf-8") as handle:
            values = json.load(handle)
    except (OSError, ValueError):
        return {}
    data = values.get("data") if isinstance(values, dict) else None
    return data if isinstance(data, dict) else {}


def model_config(config: Any, flag_values: Any, model_dir: str | None, command: str) -> Any:
    """A trained model's config with the command's data-contract flags applied.

    Order: the model's config.json, then `--set` (data.* and
    channels.input_modalities only), then `--normalization` and
    `--channel_map`. The channel map is checked against the model's
    vocabulary. Prints one line on stderr when the normalisation is assumed
    (config.json records none and no flag gives it).

    Raises:
        InputError: for a --set key that would change the network, or a bad map.
    """
    from isl import config as config_lib
    from isl import errors
    from isl.data import channel_map as channel_map_lib

    overrides = list(_value(flag_values, "set") or [])
    for override in overrides:
        key = override.split("=", 1)[0].strip()
        if not any(key == prefix or key.startswith(prefix) for prefix in MODEL_SETTABLE):
            raise errors.InputError(
                f"--set {key}: a trained model's network is fixed by its config.json; here only data.* "
                "(e.g. data.normalization, data.channel_map) and channels.input_modalities may be set."
            )
    if overrides:
        config = config_lib.apply_overrides(config, overrides)
    normalization = _value(flag_values, "normalization")
    if normalization is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, normalization=normalization))
    elif model_dir is not None and not any(item.startswith("data.normalization=") for item in overrides):
        from isl.io import model_dir as model_dir_lib

        config_path = model_dir_lib.ModelDir(model_dir).config
        # A folder without config.json (an ensemble: its members' configs hold the contract) has nothing to note.
        if os.path.isfile(config_path) and "normalization" not in recorded_data(config_path):
            print(f"isl {command}: note: {config_path} records no data.normalization; assuming "
                  f"'{config.data.normalization}' (pass --normalization to choose).", file=sys.stderr)
    pairs = _value(flag_values, "channel_map")
    if pairs:
        mapping = channel_map_lib.check(pairs, config.channels)
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, channel_map=channel_map_lib.to_pairs(mapping)))
    channel_map_lib.check(config.data.channel_map, config.channels)
    return config


def region(flag_values: Any, name: str = "region") -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The parsed `--region` / `--eval_region` window, or None (`isl.data.convert.parse_region`)."""
    value = _value(flag_values, name)
    if not value:
        return None
    from isl.data import convert

    return convert.parse_region(value, f"--{name}")


def describe(config: Any) -> dict[str, Any]:
    """What prediction.json / readout.json record of the contract."""
    return {"normalization": config.data.normalization, "channel_map": list(config.data.channel_map)}
