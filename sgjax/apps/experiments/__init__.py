"""The paper's experiments, one module per figure family; see :mod:`sgjax.apps.reproduce`.

:data:`EXPERIMENTS` is the registry (``sgjax reproduce`` takes its choices from it):
adding an experiment is one entry. Each entry's ``run(ctx) -> dict`` imports its module
only when called, so that ``sgjax reproduce --help`` does not start JAX.

Example:
    >>> sorted(EXPERIMENTS)  # doctest: +NORMALIZE_WHITESPACE
    ['dni-cnn', 'dni-mnist', 'dni-rnn', 'dni-transformer', 'fig2', 'fig3', 'fig4', 'fig5',
     'fig8', 'p-update']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class Experiment(NamedTuple):
    """A registered experiment: ``run(ctx) -> results``, a one-line summary, and (where the
    experiment has per-claim verdicts) ``claims(results) -> {claim: record}`` recomputing
    its claims from a results.json read back (for ``--aggregate`` over seeds)."""

    name: str
    run: Callable[[Any], dict]
    summary: str
    claims: Callable[[dict], dict] | None = None


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
    from sgjax.apps.experiments import fig8

    return fig8.run_fig8(ctx)


def _claims_fig2(results: dict) -> dict:
    from sgjax.apps.experiments import grid

    return grid.claims(results)


def _claims_deep(figure: str) -> Callable[[dict], dict]:
    def claims(results: dict) -> dict:
        from sgjax.apps.experiments import deep

        return deep.claims(figure, results)

    return claims


def _claims_fig4(results: dict) -> dict:
    from sgjax.apps.experiments import depth

    return depth.claims(results)


def _claims_dni(results: dict) -> dict:
    from sgjax.apps.experiments import dni

    return dni.claims(results)


def _dni(ctx: Any) -> dict:
    from sgjax.apps.experiments import dni

    return dni.run(ctx)


def _p_update(ctx: Any) -> dict:
    from sgjax.apps.experiments import pupdate

    return pupdate.run(ctx)


def _claims_p_update(results: dict) -> dict:
    from sgjax.apps.experiments import pupdate

    return pupdate.claims(results)


def _dni_rnn(ctx: Any) -> dict:
    from sgjax.apps.experiments import rnn as experiment

    return experiment.run(ctx)


def _dni_cnn(ctx: Any) -> dict:
    from sgjax.apps.experiments import cnn

    return cnn.run(ctx)


def _dni_transformer(ctx: Any) -> dict:
    from sgjax.apps.experiments import transformer_lm

    return transformer_lm.run_ctx(ctx)


#: name -> :class:`Experiment`, in the order ``reproduce all`` runs them.
EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "fig2",
            _fig2,
            "loss reconstruction on the 2-D grid (+ Fig. 9 ablations)",
            _claims_fig2,
        ),
        Experiment(
            "fig3",
            _fig3,
            "RDM drift of SG vs backprop (+ SG-vs-true cosines)",
            _claims_deep("fig3"),
        ),
        Experiment("fig4", _fig4, "MNIST: depth and activation, SG vs backprop", _claims_fig4),
        Experiment("fig5", _fig5, "weight norms under SG", _claims_deep("fig5")),
        Experiment("fig8", _fig8, "linear probes of each layer", _claims_deep("fig8")),
        Experiment("dni-mnist", _dni, "the DNI paper's every-layer MNIST FCN", _claims_dni),
        Experiment(
            "p-update",
            _p_update,
            "stochastic updates: cDNI vs backprop with skipped stage updates",
            _claims_p_update,
        ),
        Experiment("dni-rnn", _dni_rnn, "recurrent DNI: truncated BPTT with a boundary SG"),
        Experiment("dni-cnn", _dni_cnn, "the same with a CNN and convolutional SG modules"),
        Experiment(
            "dni-transformer",
            _dni_transformer,
            "a char transformer LM with SGs between its blocks vs backprop",
        ),
    )
}
