"""``python -m reachsafe``: the same command as ``reachsafe``."""

import sys

from reachsafe.cli import main

sys.exit(main())
