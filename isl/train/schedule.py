"""The schedule: the optimizer of `isl train` and its learning rate over the steps.

The faithful optimizer is Adam 1e-4 with TF1's defaults (beta1 0.9, beta2
0.999, epsilon 1e-8; no decay, no clipping, isl_reference.md §4); the
released code's momentum and Adagrad options and a warmup + cosine learning
rate (`train.lr_schedule`) are options beyond the paper.
"""

from __future__ import annotations

from typing import Any

import keras

from isl import config as config_lib
from isl import errors

# Momentum settings of the released code's MOMENTUM option (§1.11).
MOMENTUM = 0.875
MOMENTUM_DECAY_STEPS = 4096
MOMENTUM_DECAY_RATE = 0.999


def learning_rate_schedule(train_config: config_lib.TrainConfig, total_steps: int | None = None) -> Any:
    """The learning rate: a constant (the paper), or warmup + cosine decay.

    The cosine schedule rises linearly from 0 to `learning_rate` over
    `warmup_steps`, then decays along a half cosine to
    `final_learning_rate_fraction * learning_rate` at `schedule_steps` (0: at
    `total_steps`) and stays there.
    """
    if train_config.lr_schedule == "constant":
        return train_config.learning_rate
    end = train_config.schedule_steps or total_steps
    if not end:
        raise errors.InputError("train.lr_schedule=cosine needs train.schedule_steps or --steps.")
    warmup = min(train_config.warmup_steps, max(end - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else train_config.learning_rate,
        decay_steps=max(end - warmup, 1),
        alpha=train_config.final_learning_rate_fraction,
        warmup_target=train_config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(train_config: config_lib.TrainConfig, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The optimizer of §4 / §1.11: Adam with TF1 defaults, or the alternatives.

    `train.lr_schedule` (an option beyond the paper) sets the Adam learning
    rate's schedule; the momentum optimizer keeps its released decay.
    """
    if train_config.optimizer == "adam":
        # TF1's AdamOptimizer epsilon is 1e-8 (Keras's default is 1e-7).
        return keras.optimizers.Adam(
            learning_rate=learning_rate_schedule(train_config, total_steps), beta_1=0.9, beta_2=0.999, epsilon=1e-8
        )
    if train_config.optimizer == "momentum":
        schedule = keras.optimizers.schedules.ExponentialDecay(
            train_config.learning_rate, MOMENTUM_DECAY_STEPS, MOMENTUM_DECAY_RATE, staircase=False
        )
        return keras.optimizers.SGD(learning_rate=schedule, momentum=MOMENTUM)
    return keras.optimizers.Adagrad(learning_rate=learning_rate_schedule(train_config, total_steps))
