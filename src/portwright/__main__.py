"""``python -m portwright``: the CLI (and the detached supervisor's entry point)."""

import sys

from .cli import main

sys.exit(main())
