"""`isl benchmark`: the flags become one typed `BenchmarkOptions` (the benchmarks read no flags)."""

from __future__ import annotations

from absl import flags

from isl.benchmarks.options import BenchmarkOptions
from isl.cli import benchmark


def _flag_values(*arguments: str) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    benchmark.define_flags(flag_values)
    flag_values(["isl", *arguments])
    return flag_values


def test_flags_become_typed_options_and_defaults_match_the_dataclass():
    defaults = benchmark.options_from_flags(_flag_values())
    assert defaults == BenchmarkOptions()
    options = benchmark.options_from_flags(
        _flag_values("--preset=tiny", "--repeats=1", "--image_size=300", "--precision=bfloat16", "--plans=new")
    )
    assert (options.preset, options.repeats, options.image_size, options.plans) == ("tiny", 1, 300, "new")
    assert options.precision == "bfloat16" and options.precision_given and not defaults.precision_given
