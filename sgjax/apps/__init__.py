"""Applications on top of the library: the ``sgjax`` command, ``reproduce``, ``bench``.

Nothing in the core, :mod:`sgjax.infra` or :mod:`sgjax.pipeline` imports from here.
"""
