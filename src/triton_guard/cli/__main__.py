"""`python -m triton_guard.cli`: the same as the `triton-guard` console script."""

import sys

from triton_guard.cli import main

sys.exit(main())
