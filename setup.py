"""Installs the `isl` package and its `isl` command."""

import pathlib
import re

import setuptools

# One version source: `__version__` in isl/__init__.py (read as text, so installing imports nothing).
_INIT = (pathlib.Path(__file__).parent / "isl" / "__init__.py").read_text(encoding="utf-8")
VERSION = re.search(r'^__version__ = "([^"]+)"$', _INIT, re.MULTILINE).group(1)

setuptools.setup(
    name="isl",
    version=VERSION,
    description=(
        "In Silico Labeling (Christiansen et al., Cell 2018) on TensorFlow 2 / Keras 3: "
        "predict fluorescence images, with per-pixel uncertainty, from transmitted-light z-stacks."
    ),
    long_description=(pathlib.Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
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
        # The normal CDF (scipy.special.ndtr) of the read-out's per-pixel distributions: calibration TIFFs,
        # proper scores and isl calibrate's spread scale.
        # Also the ensemble's value weights (scipy.optimize.nnls, isl ensemble).
        "scipy>=1.10",
        # isl convert writes each record in pieces (bounded memory whatever the well's size): the TFRecord's
        # CRC32C extended piece by piece. TensorFlow's Python API takes only whole records.
        "google-crc32c>=1.5",
    ],
    extras_require={
        # The default test run includes the bioimage.io checks (they install cleanly next to TF 2.21 and numpy 2).
        # ruff: the linter .ci/run runs before the tests (settings in pyproject.toml). pytest-xdist: the README's
        # test command runs the suite on two worker processes (`-n 2`), one per core of the 2-core machines.
        "test": [
            "pytest>=7.4", "pytest-xdist>=3.5", "ruff>=0.6",
            "bioimageio.core>=0.11,<0.12", "bioimageio.spec>=0.5.12,<0.6", "pydantic>=2.7,<2.13",
        ],
        # `isl export --format=bioimageio`: validation and test_model of the package. bioimageio.spec 0.5.12
        # cannot serialize file fields with pydantic 2.14 ("'index_key' is expected to be an integer or a
        # string, got 'SerializationInfo(...)'"); 2.12.5 works.
        "bioimageio": ["bioimageio.core>=0.11,<0.12", "bioimageio.spec>=0.5.12,<0.6", "pydantic>=2.7,<2.13"],
        # `isl tune --tuner=bayesian`: Keras Tuner's Bayesian oracle needs both.
        "bayesian": ["scipy>=1.10", "scikit-learn>=1.3"],
        # `isl convert` / `isl predict` on OME-Zarr, CZI, LIF and ND2 files (isl.io.images).
        "formats": ["bioio>=1.1", "bioio-ome-zarr>=1.0", "bioio-czi>=1.0", "bioio-lif>=1.0", "bioio-nd2>=1.0"],
    },
    entry_points={"console_scripts": ["isl=isl.cli.main:main"]},
)
