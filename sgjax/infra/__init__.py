"""Infrastructure under the core: offline data, checkpoints, the one training loop.

Imports point down only: ``infra`` uses the core (``sgjax.nets``, ``rules``, ``train``, …),
never the applications in :mod:`sgjax.apps`.
"""
