"""The cost of a training step with interfaces vs the rule-based step (not a test).

Runs :func:`sgjax.apps.bench.interface_step.main` (the same as
``python -m sgjax.apps.bench.interface_step``); see that module for what is measured.

    python scripts/bench_interface.py [--rounds 7] [--inner 20] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's sgjax

from sgjax.apps.bench.interface_step import main

if __name__ == "__main__":
    raise SystemExit(main())
