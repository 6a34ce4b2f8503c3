import sys

from sgjax.cli import main

sys.exit(main())
