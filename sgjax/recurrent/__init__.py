"""Recurrent DNI: truncated BPTT over windows with a synthetic gradient at each boundary.

* :mod:`sgjax.recurrent.cells` — vanilla RNN and LSTM cells, pure ``(init, apply)``;
* :mod:`sgjax.recurrent.core` — the window step (BPTT-T, DNI-T, DNI+Aux-T, full BPTT),
  the boundary interface, full-BPTT references and the SG cosine diagnostic;
* :mod:`sgjax.recurrent.tasks` — Copy, Repeat Copy (with curricula) and Tiny Shakespeare;
* :mod:`sgjax.recurrent.bench` — speed per character and XLA activation memory;
* :mod:`sgjax.recurrent.experiment` — ``sgjax reproduce dni-rnn``.
"""
