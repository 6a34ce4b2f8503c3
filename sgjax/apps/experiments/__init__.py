"""The paper's experiments, one module per figure family; see :mod:`sgjax.apps.reproduce`."""
