"""Loss vs. wall time: the paper's 8x8 training output against a larger output.

    python scripts/output_size_study.py --data_dir=RECORDS --work_dir=DIR \
        [--preset=tiny] [--steps=300] [--eval_every=25] [--output_sizes=8,24]

Trains one model per output size (same preset, seed, global batch and
learning rate) and, every `eval_every` steps, measures the loss of the
current weights on one fixed evaluation set cut at the paper's geometry
(output 8), so both runs are scored on the same pixels (with batch-norm
batch statistics: short runs have not moved the moving averages yet).
Scoring time is excluded from the reported training time. Prints one line per
measurement and a final table; writes `DIR/output_size_study.json`.

The larger output (`model.output_size = 8 + 16k`, an option beyond the
paper) supervises (output / 8)^2 times more pixels per patch for a smaller
growth of the input and of the compute, because neighbouring output pixels
share most of their receptive field.

A study script, outside the package (it reads its own flags); its measured
table is in BUILD_NOTES.md ("Larger output patches, measured").
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "TFRecords written by `isl convert`.")
flags.DEFINE_string("work_dir", None, "Where the model dirs and the result go.")
flags.DEFINE_string("preset", "tiny", "Preset of both runs.")
flags.DEFINE_multi_string("set", [], "Extra config overrides for both runs.")
flags.DEFINE_integer("steps", 300, "Training steps per run.")
flags.DEFINE_integer("eval_every", 25, "Steps between loss measurements.")
flags.DEFINE_integer("eval_batches", 8, "Batches of the fixed evaluation set.")
flags.DEFINE_list("output_sizes", ["8", "24"], "Training output sizes to compare.")


def run_study(data_dir: str, work_dir: str, preset: str, overrides: list[str], steps: int,
              eval_every: int, eval_batches: int, output_sizes: list[int]) -> dict:
    import keras
    import numpy as np

    from isl import config as config_lib
    from isl import presets
    from isl.data import pipeline
    from isl.model import builder
    from isl.model import losses
    from isl.train import callbacks as callbacks_lib
    from isl.train import trainer

    base = presets.resolve_config(preset, overrides=list(overrides))
    reference = config_lib.apply_overrides(base, ["model.output_size=8"])
    eval_set = [
        (np.asarray(inputs), np.asarray(labels))
        for inputs, labels in pipeline.build_dataset(
            data_dir, reference, split="eval", seed=0, deterministic=True
        ).take(eval_batches)
    ]
    scorer = builder.build_model(reference)
    loss = losses.ISLLoss(reference.channels)

    def score(model: keras.Model) -> float:
        for target, source in zip(scorer.weights, model.weights):
            target.assign(source)
        # Batch statistics (training-mode batch norm, on a copy): after a few
        # hundred steps the 0.999 moving averages are still mostly their
        # initial values, so inference mode would score them, not the weights.
        return float(np.mean([float(loss(labels, scorer(inputs, training=True))) for inputs, labels in eval_set]))

    results: dict = {"preset": preset, "overrides": list(overrides), "steps": steps, "runs": {}}
    for output_size in output_sizes:
        config = config_lib.apply_overrides(
            base, [f"model.output_size={output_size}", f"train.eval_every_steps={max(steps, 1)}",
                   "train.eval_batches=1", f"train.checkpoint_every_steps={steps}", "train.checkpoint_every_minutes=0"]
        )
        curve: list[tuple[int, float, float]] = []

        class Measure(keras.callbacks.Callback):
            """Scores the weights every `eval_every` steps; scoring time is not counted."""

            def on_train_begin(self, logs=None):
                self.start = time.monotonic()
                self.excluded = 0.0
                self._measure(0)

            def _measure(self, step: int) -> None:
                began = time.monotonic()
                value = score(self.model)
                curve.append((step, round(began - self.start - self.excluded, 2), round(value, 5)))
                self.excluded += time.monotonic() - began
                print(f"output {output_size}: step {step} train time {curve[-1][1]}s eval loss {value:.4f}",
                      flush=True)

            def on_train_batch_end(self, batch, logs=None):
                step = callbacks_lib.global_step(self.model)
                if step % eval_every == 0:
                    self._measure(step)

        model_dir = os.path.join(work_dir, f"output_{output_size}")
        if os.path.exists(model_dir):
            raise SystemExit(f"{model_dir} exists; use an empty --work_dir (a run there would resume).")
        trainer.train(config, data_dir, model_dir, steps, show_progress=False, extra_callbacks=[Measure()])
        results["runs"][str(output_size)] = curve
    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, "output_size_study.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    return results


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS.data_dir or not FLAGS.work_dir:
        sys.exit("--data_dir and --work_dir are required.")
    results = run_study(FLAGS.data_dir, FLAGS.work_dir, FLAGS.preset, FLAGS.set, FLAGS.steps,
                        FLAGS.eval_every, FLAGS.eval_batches, [int(size) for size in FLAGS.output_sizes])
    print("\noutput  step  train_seconds  eval_loss(output-8 eval set)")
    for size, curve in results["runs"].items():
        for step, seconds, value in curve:
            print(f"{size:>6} {step:>5} {seconds:>14} {value:.4f}")


if __name__ == "__main__":
    app.run(main)
