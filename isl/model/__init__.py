"""model stage of the ISL pipeline."""
