"""`python -m serving`: run the model server (the same as `mlpipe serve`)."""

import sys

from serving.cli import main

sys.exit(main())
