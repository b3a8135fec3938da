"""Tests for the lab's file-name grammar, in both published forms."""

from __future__ import annotations

import os

import pytest

from isl import errors
from isl.io import filenames

SAMPLE_FORM = (
    "lab-FINKBEINER,condition-KEVAN_0_8,acquisition_date,year-2015,month-10,day-5,minute-0,well-A4,"
    "tile_computation-STITCHED,z_depth-7,channel-PHASE_CONTRAST,is_mask-false.png"
)
NESTED_TARGET = (
    "lab-Finkbeiner,condition-kevan_0_8,acquisition_date,year-2015,month-9,day-28,well-A4,"
    "depth_computation,value-MAXPROJECT,channel,value-DAPI_CONFOCAL,is_mask-false,kind,value-ORIGINAL.png"
)
NESTED_PREDICTED = (
    "lab-Finkbeiner,condition-kevan_0_8,acquisition_date,year-2015,month-9,day-28,well-A4,"
    "depth_computation,value-MAXPROJECT,channel,value-MAP2_CONFOCAL,statistic,value-MEDIAN,kind,value-PREDICTED.png"
)
NESTED_INPUT = (
    "lab-Finkbeiner,condition-kevan_0_8,acquisition_date,year-2015,month-9,day-28,well-A4,"
    "z_depth-12,channel,value-PHASE_CONTRAST,is_mask-false,kind,value-ORIGINAL.png"
)


def test_parses_the_released_sample_form():
    key = filenames.parse("/some/dir/" + SAMPLE_FORM)
    assert (key.lab, key.condition, key.well, key.date) == ("FINKBEINER", "KEVAN_0_8", "A4", "2015-10-05")
    assert (key.z, key.channel, key.kind, key.is_target, key.nested) == (7, "PHASE_CONTRAST", "", False, False)


def test_parses_the_nested_paper_data_form():
    target = filenames.parse(NESTED_TARGET)
    assert (target.z, target.channel, target.kind, target.nested) == ("MAXPROJECT", "DAPI_CONFOCAL", "ORIGINAL", True)
    assert target.date == "2015-09-28" and target.well == "A4" and target.condition == "kevan_0_8"
    predicted = filenames.parse(NESTED_PREDICTED)
    assert predicted.is_predicted and predicted.statistic == "MEDIAN" and predicted.channel == "MAP2_CONFOCAL"
    stack = filenames.parse(NESTED_INPUT)
    assert (stack.z, stack.channel, stack.kind) == (12, "PHASE_CONTRAST", "ORIGINAL")
    assert stack.well_identity == target.well_identity


@pytest.mark.parametrize("name", [SAMPLE_FORM, NESTED_TARGET, NESTED_PREDICTED, NESTED_INPUT])
def test_format_name_inverts_parse(name):
    key = filenames.parse(name)
    assert filenames.parse(filenames.format_name(key)) == key


@pytest.mark.parametrize(
    "name, problem",
    [
        ("lab-X,well-A1,z_depth-1,is_mask-false.png", "no 'channel-NAME'"),
        ("lab-X,well-A1,channel-DIC,is_mask-false.png", "neither 'z_depth-N'"),
        ("lab-X,z_depth-a1,channel-DIC,is_mask-false.png", "z_depth must be"),
        ("lab-X,depth_computation-MINPROJECT,channel-DAPI_CONFOCAL.png", "only MAXPROJECT"),
    ],
)
def test_bad_names_raise_input_error_naming_the_file(name, problem):
    with pytest.raises(errors.InputError, match=problem) as raised:
        filenames.parse(name)
    assert name in str(raised.value)


def test_parses_every_file_of_the_real_sample(sample_dir):
    keys = [filenames.parse(name) for name in sorted(os.listdir(sample_dir))]
    assert len(keys) == 16
    assert sorted(key.z for key in keys if not key.is_target) == list(range(13))
    assert {key.channel for key in keys if key.is_target} == {"DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL"}
    assert {key.well_identity for key in keys} == {("FINKBEINER", "KEVAN_0_8", "2015-10-05", "0", "A4")}
