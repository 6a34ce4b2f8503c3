"""``python -m sgjax`` is the ``sgjax`` command."""

import sys

from sgjax.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
