"""File input and output: file names, images, atomic writes."""
