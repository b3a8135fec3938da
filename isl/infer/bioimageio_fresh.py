"""Computes a bioimage.io package's test outputs the way `bioimageio test` will recompute them.

Run by `isl export --format=bioimageio` as a script in a fresh Python process
(`python -I bioimageio_fresh.py RDF OUTPUT_NPY`) that never imports `isl`:
it only needs bioimageio.core and TensorFlow. It follows the test's own steps
(bioimageio.core 0.11, `_test_recreate_test_outputs`): `enable_determinism`
first, which sets TF_ENABLE_ONEDNN_OPTS=0 before TensorFlow is imported, so
the convolutions run on the same kernels as in `bioimageio test`; then the
prediction pipeline with the rdf's preprocessing on the test input. An
exporting process that has already imported TensorFlow runs the oneDNN
kernels instead, whose rounding differs (measured: 391 of 62,208 elements
of the shipped checkpoint's package flipped).

Writes the output tensor as float32 `.npy` in the rdf's axis order.
"""

from __future__ import annotations

import sys

WEIGHT_FORMAT = "tensorflow_saved_model_bundle"


def main(rdf_path: str, output_path: str) -> None:
    from bioimageio.core import enable_determinism

    enable_determinism("seed_only", weight_formats=[WEIGHT_FORMAT])  # Before TensorFlow's import, as the test.
    import numpy as np
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core import load_model_description
    from bioimageio.core.digest_spec import get_test_input_sample

    model = load_model_description(rdf_path, perform_io_checks=False)
    sample = get_test_input_sample(model)
    with create_prediction_pipeline(bioimageio_model=model, weight_format=WEIGHT_FORMAT) as pipeline:
        pipeline.apply_preprocessing(sample)
        results = pipeline.predict_sample_without_blocking(
            sample, skip_postprocessing=True, skip_preprocessing=True, skip_input_padding=True,
            skip_output_cropping=True)
        pipeline.apply_postprocessing(results)
    (descr,) = model.outputs
    tensor = results.members[descr.id]
    order = [str(axis.id) for axis in descr.axes]
    np.save(output_path, tensor.data.transpose(*order).to_numpy().astype(np.float32))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
