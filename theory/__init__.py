"""Numerical checks of every formal claim of Czarnecki et al. (2017).

``theory.CLAIMS`` maps a claim family's name to a function ``(key, instances)`` that
returns a list of :class:`theory.record.Claim` records, negative controls included.
``sgjax verify`` (:mod:`theory.cli`) runs them and prints the table.
"""

from theory.record import Claim
from theory.registry import CLAIMS, DEFAULT_INSTANCES

__all__ = ["CLAIMS", "DEFAULT_INSTANCES", "Claim"]
