"""sgjax: synthetic gradients and decoupled neural interfaces in JAX.

Layers (imports point down only; ``docs/design.md`` has the map and
``scripts/check_layers.py`` checks it):

- core, at the top of the package: :mod:`sgjax.nets`, :mod:`sgjax.losses`,
  :mod:`sgjax.estimators`, :mod:`sgjax.sweep`, :mod:`sgjax.rules` (the rule registry),
  :mod:`sgjax.train` (the step and the one training loop) — pure functions, no I/O;
- analysis and adapters over the core: :mod:`sgjax.diagnostics`, :mod:`sgjax.flax_adapter`;
- :mod:`sgjax.infra`: the run configuration, checkpointed runs, offline data;
- :mod:`sgjax.pipeline`: update-unlocked training across devices;
- :mod:`sgjax.apps`: the ``sgjax`` command, ``reproduce``, ``bench`` and the experiments.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

__version__ = "0.1.0"

#: modules that moved in 0.2 (old attribute name -> new module); ``from sgjax import data``
#: keeps working for one release with a DeprecationWarning that names the new place.
_MOVED = {
    "data": "sgjax.infra.data",
    "checkpoint": "sgjax.infra.checkpoint",
    "runner": "sgjax.infra.runner",
    "cli": "sgjax.apps.cli",
    "bench": "sgjax.apps.bench",
    "reproduce": "sgjax.apps.reproduce",
    "experiments": "sgjax.apps.experiments",
}


def __getattr__(name: str) -> ModuleType:
    if name in _MOVED:
        new = _MOVED[name]
        warnings.warn(
            f"sgjax.{name} moved to {new}; import it from there "
            f"(`from {new.rsplit('.', 1)[0]} import {name}`)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)
    raise AttributeError(f"module 'sgjax' has no attribute {name!r}")
