"""Files: atomic writes, the checkpoint format, datasets."""
