"""The paper's experiments, one module per figure family; see :mod:`sgjax.apps.reproduce`.

:data:`EXPERIMENTS` is the registry (``sgjax reproduce`` takes its choices from it):
adding an experiment is one entry. Each entry's ``run(ctx) -> dict`` imports its module
only when called, so that ``sgjax reproduce --help`` does not start JAX.

Example:
    >>> sorted(EXPERIMENTS)
    ['dni-cnn', 'dni-mnist', 'dni-rnn', 'fig2', 'fig3', 'fig4', 'fig5', 'fig8']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Experiment(NamedTuple):
    """A registered experiment: ``run(ctx) -> results`` and a one-line summary."""

    name: str
    run: Callable[[Any], dict]
    summary: str


def _fig2(ctx: Any) -> dict:
    from sgjax.apps.experiments import grid

    return grid.run(ctx)


def _fig3(ctx: Any) -> dict:
    from sgjax.apps.experiments import deep

    return deep.run_fig3(ctx)


def _fig4(ctx: Any) -> dict:
    from sgjax.apps.experiments import depth

    return depth.run(ctx)


def _fig5(ctx: Any) -> dict:
    from sgjax.apps.experiments import deep

    return deep.run_fig5(ctx)


def _fig8(ctx: Any) -> dict:
    from sgjax.apps.experiments import deep

    return deep.run_fig8(ctx)


def _dni(ctx: Any) -> dict:
    from sgjax.apps.experiments import dni

    return dni.run(ctx)


def _dni_rnn(ctx: Any) -> dict:
    from sgjax.apps.experiments import rnn as experiment

    return experiment.run(ctx)


def _dni_cnn(ctx: Any) -> dict:
    from sgjax.apps.experiments import cnn

    return cnn.run(ctx)


#: name -> :class:`Experiment`, in the order ``reproduce all`` runs them.
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("fig2", _fig2, "loss reconstruction on the 2-D grid (+ Fig. 9 ablations)"),
        Experiment("fig3", _fig3, "RDM drift of SG vs backprop (+ SG-vs-true cosines)"),
        Experiment("fig4", _fig4, "MNIST: depth and activation, SG vs backprop"),
        Experiment("fig5", _fig5, "weight norms under SG"),
        Experiment("fig8", _fig8, "linear probes of each layer"),
        Experiment("dni-mnist", _dni, "the DNI paper's every-layer MNIST FCN"),
        Experiment("dni-rnn", _dni_rnn, "recurrent DNI: truncated BPTT with a boundary SG"),
        Experiment("dni-cnn", _dni_cnn, "the same with a CNN and convolutional SG modules"),
    )
}
