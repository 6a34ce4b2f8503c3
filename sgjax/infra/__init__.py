"""Infrastructure over the core: the run configuration, checkpointed runs, offline data.

Imports point down only: ``infra`` uses the core (``sgjax.nets``, ``rules``, ``train``, …),
never the applications in :mod:`sgjax.apps`.
"""
