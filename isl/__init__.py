"""In Silico Labeling (Christiansen et al., Cell 2018) on TensorFlow 2 / Keras 3.

A deep network takes a transmitted-light z-stack of unlabeled cells and
predicts fluorescence images, each pixel a distribution over 256 intensity
bins. README.md is the front door, `isl COMMAND --help` documents each command,
BUILD_NOTES.md holds the design notes and docs/MEASUREMENTS.md the measured figures.
"""

__version__ = "0.1.0"
