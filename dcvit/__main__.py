"""`python -m dcvit`: the same as the `dcvit` command."""

import sys

from .cli import main

sys.exit(main())
