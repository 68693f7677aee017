"""`python -m pipeline.cli` is `mlpipe`, like `python -m pipeline`."""

from pipeline.cli import entry

entry()
