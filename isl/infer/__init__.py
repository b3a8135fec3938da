"""infer stage of the ISL pipeline."""
