"""`isl.model.statistic_names`: the one parser of statistic names (predict and export)."""

from __future__ import annotations

import pytest

from isl import errors
from isl.infer import export
from isl.infer import predict
from isl.model import statistic_names


def test_names_split_into_the_papers_six_and_quantiles_in_order_once_each():
    assert statistic_names.parse_statistic_names(["median", " q05", "std", "q95", "median", ""]) == (
        ("median", "std"), (0.05, 0.95))
    assert [statistic_names.quantile_name(q) for q in (0.05, 0.5, 0.95)] == ["q05", "q50", "q95"]


@pytest.mark.parametrize("name", ["bogus", "q5", "q00", "q100", "qxx"])
def test_unknown_names_and_malformed_quantiles_are_input_errors_naming_them(name):
    with pytest.raises(errors.InputError, match=repr(name)):
        statistic_names.parse_statistic_names(["median", name])


def test_predict_and_export_use_the_one_parser_export_without_quantiles():
    assert predict.parse_statistics(["mean", "q10"]) == (("mean",), (0.1,))
    assert export.parse_statistics(["mean", "mode", "mean"]) == ("mean", "mode")
    with pytest.raises(errors.InputError, match="quantiles qNN are not available"):
        export.parse_statistics(["mean", "q10"])
