"""``python -m sgjax`` is the ``sgjax`` command."""

import sys

from sgjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
