"""``python -m portwright``: the CLI (and the detached supervisor's entry point), through
``entry``, which starts the fork server early for a detached run."""

import sys

from .entry import main

sys.exit(main())
