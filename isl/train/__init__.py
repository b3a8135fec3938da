"""train stage of the ISL pipeline."""
