"""Statistic names: the paper's six and quantiles "qNN" (no TensorFlow, no Keras).

The one owner of which statistic names exist and how a list of them is
parsed; `isl predict` (`isl.infer.predict`, `isl.infer.well`) and `isl
export` (`isl.infer.export`, `isl.infer.bioimageio`) both parse with
`parse_statistic_names`. The statistics are computed by
`isl.model.statistics` (the six) and `isl.infer.predict.quantile_indices`
(the median and quantiles).
"""

from __future__ import annotations

from collections.abc import Sequence

from isl import errors

STATISTICS = ("mode", "median", "mean", "std", "p_nonzero", "entropy")
# Quantile statistics beyond the paper's six: "q01" .. "q99" (percent).
QUANTILE_PREFIX = "q"


def parse_statistic_names(
    names: Sequence[str], quantiles: bool = True
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The one parser of statistic names (`isl predict`, `isl export`).

    Splits names into the paper's six (`STATISTICS`) and quantiles "qNN"
    (percent, 01..99: "q05" -> 0.05), in the given order. Blank names are
    skipped and repeats kept once.

    Args:
        names: e.g. ("median", "std", "q05", "q95").
        quantiles: accept quantiles (False: a consumer that computes only the six).

    Returns:
        (paper statistic names, quantiles in (0, 1)).

    Raises:
        InputError: naming every unknown (or, with `quantiles=False`,
            quantile) name and what is known.
    """
    known: list[str] = []
    found: list[float] = []
    unknown: list[str] = []
    for name in dict.fromkeys(name.strip() for name in names if name.strip()):
        if name in STATISTICS:
            known.append(name)
        elif quantiles and is_quantile_name(name):
            found.append(int(name[len(QUANTILE_PREFIX):]) / 100)
        else:
            unknown.append(name)
    if unknown:
        extra = ", and quantiles q01 .. q99" if quantiles else " (quantiles qNN are not available here)"
        raise errors.InputError(
            f"Unknown statistic(s) {', '.join(repr(name) for name in unknown)}. Known: {', '.join(STATISTICS)}{extra}."
        )
    return tuple(known), tuple(found)


def is_quantile_name(name: str) -> bool:
    """True for "q01" .. "q99"."""
    digits = name[len(QUANTILE_PREFIX):]
    return name.startswith(QUANTILE_PREFIX) and len(digits) == 2 and digits.isdigit() and 0 < int(digits) < 100


def quantile_name(quantile: float) -> str:
    """0.05 -> "q05"."""
    return f"{QUANTILE_PREFIX}{round(quantile * 100):02d}"
