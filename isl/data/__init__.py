"""data stage of the ISL pipeline."""
