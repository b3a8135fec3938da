"""`isl describe`: the table and figures of a preset."""

from __future__ import annotations

import json

from isl.cli import main


def _run(capsys, *arguments):
    code = main.run_command(["describe", *arguments, "--json"])
    output = capsys.readouterr()
    return code, output


def test_describe_paper_figures(capsys):
    code, output = _run(capsys, "--preset=paper")
    assert code == 0
    result = json.loads(output.out.strip().splitlines()[-1])
    assert result["parameters"]["core"] == 8_113_388
    assert result["parameters"]["total_trainable"] == 9_273_708
    assert result["parameters"]["non_trainable"] == 35_772
    assert result["num_modules"] == 104 and result["embedding_depth"] == 64
    assert result["modules"][-1]["name"] == "upper_recursion_13"
    assert result["receptive_field"] > 250  # every output pixel sees the whole patch (§1.9)
    # About 7.9 GFLOP per patch without the projection (§1.9).
    projection_flops = 2 * 250 * 250 * 52 * 16
    assert abs(result["flops_per_patch"]["core"] - projection_flops - 7.9e9) < 0.05e9
    assert "('downscale_4_3', 26, 16, 4, 2, 'conv', 218, 40, 234, 12, 40)" in output.out


def test_describe_tiny_larger_input(capsys):
    code, output = _run(capsys, "--preset=tiny", "--input_size=46", "--table=false")
    assert code == 0
    result = json.loads(output.out.strip().splitlines()[-1])
    assert (result["input_size"], result["output_size"]) == (46, 12)
    assert result["flops_per_output_pixel"]["total"] * 144 == result["flops_per_patch"]["total"]


def test_describe_rejects_invalid_input_size(capsys):
    code, output = _run(capsys, "--preset=paper", "--input_size=258")
    assert code == 2
    assert "250 + 16k" in output.err
