"""Named experiment configurations, in one explicit dict.

* `paper`: the released concordance model and training settings, exactly
  (isl_reference.md §1.6, §4).
* `fovea`: the older fovea model of the same builder (§1.8).
* `tiny`: a few-thousand-parameter concordance model for tests and the demo;
  builds and runs in about a second. Its batch-norm momentum is 0.99, not the
  paper's 0.999: with 0.999 the moving averages keep 0.999**500 = 61% of
  their initial values after a 500-step demo run, and inference-mode outputs
  are far off; 0.99 forgets them within a few hundred steps.
* `condition_a` .. `condition_e`: the paper model with the vocabulary of one
  of the paper's conditions (its transmitted-light modality and labels,
  §3.8). Training all conditions together as one multi-task model uses
  `paper`, whose vocabulary is the union.

Recipes (`RECIPES`) are overlays of training settings applied on top of a
preset (`isl train --recipe=NAME`), between the preset and `--config` /
`--set`. Every part is a named config option, off in the presets:

* `cpu`: the small-compute recipe, for training the paper network in hours
  on a few CPU cores instead of weeks on a cluster (measured in
  BUILD_NOTES.md, "Issue 12"): wide output patches (120 px, 362-px inputs:
  15x the labelled pixels of a 24-px patch for about 2.5x its cost) with
  batch 4, bfloat16 and the fused speed options, learning rate 1e-3 with a
  100-step warmup and a cosine decay to the run's last step, a random
  dihedral transform per patch, batch-norm momentum 0.99 so in-training
  evaluations are meaningful after a few hundred steps, in-training
  whole-image Pearson r every 200 steps (each scored after recalibrating a
  copy's batch-norm statistics on 10 batches) keeping the best weights, and
  batch-norm recalibration on 40 batches at the end.
* `unet_regression`: the peer baseline as fnet and CARE train it, in this
  project's pipeline so it runs on the same data with the same commands: a
  4-level U-Net with 16 base filters (1.95 M weights), BN + ReLU, a linear
  output per target channel, MSE on per-channel standardized targets, batch
  8 of random 128 x 128 crops with flips and rotations, Adam 1e-3 with a
  cosine decay, bfloat16 compute, whole-image Pearson r every 200 steps
  keeping the best weights. Prediction is one pass over the whole image
  while it fits its memory budget, tiles with context on the pooling grid
  above (`isl.infer.regression.value_bands`).
* `unet_distribution`: the same U-Net (`model.architecture="unet"`: 4
  levels, 16 base filters), batch, crop and schedule as `unet_regression`,
  under the paper's 256-bin heads and loss, so each pixel gets a
  distribution (intervals, `isl calibrate`, proper scores). Its U-Net works
  on a 128-px crop as the regression's does, but only the centre 24 px are
  output (52 px of context on each side): the heads cost per output pixel
  (30 heads x 256 logits; 24-px outputs made a step 2.7x the regression's,
  56-px outputs 7.5x, 120-px outputs 52x on the 2-core machine), so the
  recipe trades output pixels for steps. Predicted tile by tile like the
  paper network (each tile reads 52 px of context).
"""

from __future__ import annotations

import dataclasses
import json

from isl import config as config_lib
from isl import errors

_PAPER = config_lib.ExperimentConfig(name="paper")

_TINY = config_lib.ExperimentConfig(
    name="tiny",
    model=config_lib.ModelConfig(
        num_scales=3,
        projection_depth=8,
        base_depth=24,
        lower_modules_scale_0=2,
        lower_modules_step=1,
        upper_tower_modules=2,
        batch_norm_momentum=0.99,
    ),
    data=config_lib.DataConfig(crop_size=100, patch_stride=58),
    train=config_lib.TrainConfig(learning_rate=1e-3, checkpoint_every_steps=50, eval_every_steps=50, eval_batches=4),
)

_FOVEA = config_lib.ExperimentConfig(
    name="fovea",
    model=config_lib.ModelConfig(
        architecture="fovea",
        projection_depth=0,
        lower_modules_scale_0=10,
        lower_modules_step=2,
        upper_tower_modules=4,
        up_kernel=2,
    ),
)


def _condition(
    name: str, modalities: tuple[str, ...], labels: tuple[str, ...], num_z: int = 26
) -> config_lib.ExperimentConfig:
    channels = config_lib.ChannelConfig(
        input_modalities=modalities, target_channels=labels, num_z_values=num_z
    )
    return dataclasses.replace(_PAPER, name=name, channels=channels)


PRESETS: dict[str, config_lib.ExperimentConfig] = {
    "paper": _PAPER,
    "tiny": _TINY,
    "fovea": _FOVEA,
    # The paper's conditions (isl_reference.md §3.8). Rows C and D are
    # partly unconfirmed; their vocabularies follow data.md.
    "condition_a": _condition(
        "condition_a", ("BRIGHTFIELD",), ("DAPI_WIDEFIELD", "TUJ1_WIDEFIELD", "ISLET_WIDEFIELD")
    ),
    "condition_b": _condition(
        "condition_b", ("PHASE_CONTRAST",), ("DAPI_CONFOCAL", "NFH_CONFOCAL", "MAP2_CONFOCAL")
    ),
    "condition_c": _condition("condition_c", ("PHASE_CONTRAST",), ("DAPI_CONFOCAL", "DEAD_CONFOCAL")),
    "condition_d": _condition("condition_d", ("PHASE_CONTRAST",), ("DAPI_CONFOCAL", "MAP2_CONFOCAL", "NFH_CONFOCAL")),
    "condition_e": _condition("condition_e", ("DIC",), ("DAPI_CONFOCAL", "CELLMASK_CONFOCAL")),
}


# name -> dotted overrides, applied in order (see the module docstring).
RECIPES: dict[str, dict[str, object]] = {
    "cpu": {
        "model.output_size": 120,
        "model.batch_norm_momentum": 0.99,
        "train.batch_size": 4,
        "train.mixed_precision": "bfloat16",
        "train.fused_elementwise": True,
        "train.fast_batch_norm": True,
        "train.learning_rate": 1e-3,
        "train.lr_schedule": "cosine",
        "train.warmup_steps": 100,
        "train.final_learning_rate_fraction": 0.02,
        "train.eval_every_steps": 200,
        "train.eval_batches": 16,
        "train.eval_pearson": True,
        "train.keep_best": True,
        "train.recalibrate_batches": 40,
        "train.eval_recalibrate_batches": 10,
        "train.checkpoint_every_steps": 200,
        "data.rotate_per_example": True,
    },
    "unet_regression": {
        "model.architecture": "unet_regression",
        "model.unet_levels": 4,
        "model.unet_filters": 16,
        "model.output_size": 128,
        "model.batch_norm_momentum": 0.99,
        # 2 x 2 patches of 128 at offsets 0 and 256 need a 384-px crop; images of 384 px or more train.
        "data.crop_size": 384,
        "train.batch_size": 8,
        "train.mixed_precision": "bfloat16",
        "train.learning_rate": 1e-3,
        "train.lr_schedule": "cosine",
        "train.warmup_steps": 50,
        "train.final_learning_rate_fraction": 0.1,
        "train.eval_every_steps": 200,
        "train.eval_batches": 16,
        "train.eval_pearson": True,
        "train.keep_best": True,
        "train.recalibrate_batches": 20,
        "train.eval_recalibrate_batches": 10,
        "train.checkpoint_every_steps": 400,
    },
}


# The heteroscedastic U-Net regression: unet_regression's U-Net, data and schedule, predicting a mean and a
# log-spread per channel, trained on their Gaussian negative log-likelihood (not in the paper; issue 24).
# unet_regression's U-Net, batch, crop and schedule under the paper's 256-bin heads and loss. 24-px outputs read 52
# px of context on each side: the U-Net works on the same 128-px crop as unet_regression's (24 + 2 x 52 = 128, a
# multiple of 2**4). The heads cost per output pixel (~30 heads x 256 logits each), so outputs are kept small and
# the steps many (docs/MEASUREMENTS.md § 28).
RECIPES["unet_distribution"] = {**RECIPES["unet_regression"], "model.architecture": "unet",
                                "model.output_size": 24, "model.unet_context": 52}

RECIPES["unet_regression_spread"] = {**RECIPES["unet_regression"], "model.regression_spread": True}


def apply_recipe(config: config_lib.ExperimentConfig, name: str) -> config_lib.ExperimentConfig:
    """The config with recipe `name`'s overrides applied (recorded in `config.recipe`)."""
    if name not in RECIPES:
        raise errors.InputError(f"Unknown recipe {name!r}. Known recipes: {', '.join(sorted(RECIPES))}")
    overrides = [f"{key}={json.dumps(value)}" for key, value in RECIPES[name].items()]
    overrides.append(f"recipe={name}")
    return config_lib.apply_overrides(config, overrides)


def get_preset(name: str) -> config_lib.ExperimentConfig:
    """Returns the named preset, validated."""
    try:
        return PRESETS[name].validate()
    except KeyError:
        raise errors.InputError(
            f"Unknown preset {name!r}. Known presets: {', '.join(sorted(PRESETS))}"
        ) from None


def resolve_config(
    preset: str | None = None,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    recipe: str | None = None,
) -> config_lib.ExperimentConfig:
    """Layers a preset, a recipe, then a JSON config file, then `key=value` overrides.

    Here, not in `isl.config`, so that the presets (built from the config
    classes) never import back into `isl.config`.
    """
    config = get_preset(preset or "paper")
    if recipe:
        config = apply_recipe(config, recipe)
    if config_path:
        config = config_lib.load_config(config_path, base=config)
    if overrides:
        config = config_lib.apply_overrides(config, list(overrides))
    return config
