"""`python -m exo_runtime` is `exo-runtime`."""

import sys

from exo_runtime.cli import main

sys.exit(main())
