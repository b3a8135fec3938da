"""Installs the `isl` package and its `isl` command."""

import setuptools

setuptools.setup(
    name="isl",
    version="0.1.0",
    description=(
        "In Silico Labeling (Christiansen et al., Cell 2018) on TensorFlow 2 / Keras 3: "
        "predict fluorescence images, with per-pixel uncertainty, from transmitted-light z-stacks."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["isl", "isl.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.3,<4",
        "keras-tuner>=1.4.7",
        "numpy>=1.26",
        "imageio>=2.31",
        "tifffile>=2023.7",
        "absl-py>=1.4",
        "psutil>=5.9",
    ],
    extras_require={
        "test": ["pytest>=7.4"],
        # `isl tune --tuner=bayesian`: Keras Tuner's Bayesian oracle needs both.
        "bayesian": ["scipy>=1.10", "scikit-learn>=1.3"],
        # `isl convert` / `isl predict` on OME-Zarr, CZI, LIF and ND2 files (isl.io.images).
        "formats": ["bioio>=1.1", "bioio-ome-zarr>=1.0", "bioio-czi>=1.0", "bioio-lif>=1.0", "bioio-nd2>=1.0"],
    },
    entry_points={"console_scripts": ["isl=isl.cli.main:main"]},
)
