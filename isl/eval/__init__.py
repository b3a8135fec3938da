"""eval stage of the ISL pipeline."""
