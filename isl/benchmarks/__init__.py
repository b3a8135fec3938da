"""Benchmarks behind `isl benchmark NAME`: each module has `run(flag_values) -> dict`.

Benchmarks are not tests: they print figures (absolute numbers and ratios
measured side by side in one run) and return them for `--json`.
"""
