"""Data for mlpipe: the embedded default dataset (the Chicago taxi sample that tfx ships) and span tools."""
