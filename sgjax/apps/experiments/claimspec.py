"""One registered claim's record (:mod:`sgjax.apps.experiments.registry`), on its own so
that the registry's families (:mod:`~sgjax.apps.experiments.registry_rnn`) can build
entries without importing the registry."""

from __future__ import annotations

from typing import NamedTuple

#: When the paper digest (``paper.md``, its §3 checks and §6 claims) existed: before the
#: project's first commit, so before every run.
DIGEST = "2026-11-24T00:00:00+00:00"


class ClaimSpec(NamedTuple):
    """One registered claim (see the module docstring)."""

    id: str
    source: str  # "paper.md §6 item N", "paper.md §3.x check", or "ours"
    registered: str  # ISO time of the commit that first stated it (DIGEST for paper claims)
    commit: str  # that commit ("digest" for paper claims)
    regime: str  # what the claim presupposes; outside it a failure is "untested"
    resolution: str  # how a margin is told from zero
    contrast: str = ""  # the backprop control judged on the same run, if any


#: the resolution of every "no run collapses" claim
COLLAPSE_RES = (
    "a collapse is a final validation BPC above the bigram model's on the same split "
    "(a count: exact)"
)
