"""Mapping the channel names of a user's files onto a model's channels (`data.channel_map`, the one owner).

A model knows the channels of its vocabulary (`ChannelConfig`): e.g. the
shipped checkpoint takes PHASE_CONTRAST and predicts DAPI_CONFOCAL,
NFH_CONFOCAL and MAP2_CONFOCAL. A user's files may name other channels for the
same role: a bright-field stack (BRIGHTFIELD), a Hoechst image. A channel map
renames them before the files are matched with the vocabulary:

    BRIGHTFIELD=PHASE_CONTRAST     read the bright-field stack as the model's phase contrast
    HOECHST=DAPI_CONFOCAL          read Hoechst images as the DAPI target

It is given as `--channel_map=FROM=TO[,FROM=TO...]` (or `--set
data.channel_map=...`) and recorded in dataset.json and config.json, so every
command that reads wells with a model applies the same one. Transmitted light
maps only to transmitted light and a stain only to a stain: a model trained on
one modality reads another only when the user says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from isl import config as config_lib
from isl import errors

FLAG = "--channel_map"


def parse(pairs: Iterable[str]) -> dict[str, str]:
    """`["FROM=TO", ...]` -> {FROM: TO}. Raises InputError for a malformed or repeated FROM."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        pair = pair.strip()
        if not pair:
            continue
        source, separator, target = (part.strip() for part in pair.partition("="))
        if not separator or not source or not target:
            raise errors.InputError(f"{FLAG}: {pair!r} is not FROM=TO (e.g. BRIGHTFIELD=PHASE_CONTRAST).")
        if source in mapping and mapping[source] != target:
            raise errors.InputError(f"{FLAG}: {source} is mapped twice ({mapping[source]} and {target}).")
        mapping[source] = target
    return mapping


def check(pairs: Iterable[str], channels: config_lib.ChannelConfig) -> dict[str, str]:
    """The parsed map, checked against a model's vocabulary.

    Raises:
        InputError: naming the flag, the pair and the valid choices, for a
            target the model does not know, or a map between transmitted
            light and a stain.
    """
    mapping = parse(pairs)
    stains = tuple(channels.target_channels)
    for source, target in mapping.items():
        pair = f"{source}={target}"
        if channels.is_transmitted_light(target) and target not in channels.input_modalities:
            raise errors.InputError(
                f"{FLAG}: {pair}: the model does not take {target}; map transmitted light to "
                f"{', '.join(channels.input_modalities)}."
            )
        if target in channels.input_modalities:
            if source in stains:
                raise errors.InputError(
                    f"{FLAG}: {pair}: {source} is a stain of the model; transmitted light maps only to transmitted "
                    f"light ({', '.join(channels.input_modalities)})."
                )
            continue
        if target not in stains:
            raise errors.InputError(
                f"{FLAG}: {pair}: {target} is not a channel of the model. Valid choices: transmitted light "
                f"{', '.join(channels.input_modalities)}; stains {', '.join(stains)}."
            )
        if channels.is_transmitted_light(source):
            raise errors.InputError(
                f"{FLAG}: {pair}: {source} is transmitted light; it maps only to "
                f"{', '.join(channels.input_modalities)}, not to a stain."
            )
    return mapping


def apply(channel: str, mapping: Mapping[str, str] | None) -> str:
    """The model's name for a file's channel."""
    return (mapping or {}).get(channel, channel)


def to_pairs(mapping: Mapping[str, str]) -> tuple[str, ...]:
    """{FROM: TO} -> ("FROM=TO", ...), the form config.json records."""
    return tuple(f"{source}={target}" for source, target in mapping.items())
