"""`python -m dcvit.cli`: the same as the `dcvit` command."""

import sys

from . import main

sys.exit(main())
