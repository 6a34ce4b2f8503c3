"""sgjax: synthetic gradients and decoupled neural interfaces in JAX."""

__version__ = "0.1.0"
