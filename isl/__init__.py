"""In Silico Labeling (Christiansen et al., Cell 2018) on TensorFlow 2 / Keras 3.

A deep network takes a transmitted-light z-stack of unlabeled cells and
predicts fluorescence images, each pixel a distribution over 256 intensity
bins. See README.md for the commands and BUILD_NOTES.md for design notes.
"""

__version__ = "0.1.0"
