"""``python -m forkcheck check PATH ...``: see ``forkcheck.cli``."""
import sys

from .cli import main

sys.exit(main())
