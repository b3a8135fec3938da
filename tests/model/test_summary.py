"""`isl.model.summary`: parameter and FLOP counts of a built model."""

from __future__ import annotations

from isl import presets
from isl.model import builder
from isl.model import summary


def test_the_tiny_models_parts_add_up_to_its_trainable_parameters_and_flops_scale_with_the_patch():
    config = presets.get_preset("tiny")
    result = summary.summarize(config)
    model = builder.build_model(config, input_size=result["input_size"])
    trainable = sum(int(weight.numpy().size) for weight in model.trainable_weights)
    assert result["parameters"]["total_trainable"] == trainable
    flops = result["flops_per_patch"]
    assert flops["total"] == flops["core"] + flops["heads"] > 0
    larger = summary.summarize(config, result["input_size"] + 2 * result["phase"])
    assert larger["output_size"] == result["output_size"] + 2 * result["phase"]
    assert larger["flops_per_patch"]["core"] > result["flops_per_patch"]["core"]
