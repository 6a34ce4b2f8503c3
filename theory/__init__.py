"""Numerical checks of every formal claim of Czarnecki et al. (2017)."""
