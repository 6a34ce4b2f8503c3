"""Recurrent DNI: truncated BPTT over windows with a synthetic gradient at each boundary.

* :mod:`sgjax.recurrent.cells` — vanilla RNN and LSTM cells, pure ``(init, apply)``; a
  cell's state may be any pytree (an ``(h, c)`` tuple, with ``init_state``);
* :mod:`sgjax.recurrent.harness` — the model, the harness (method, window, the boundary SG
  and its stabilising options), the training state and the shape checks;
* :mod:`sgjax.recurrent.core` — the pure window step ``make_step(h, opt)(state, window)
  -> (state, metrics)`` (BPTT-T, DNI-T, DNI+Aux-T, full BPTT; refuses non-finite updates
  and bad labels inside ``jit``), the boundary interface and the sequence driver (it
  re-exports every name of ``harness``);
* :mod:`sgjax.recurrent.reference` — full BPTT on the whole sequence: the true boundary
  gradients, the SG cosine diagnostic, the validation evaluator;
* :mod:`sgjax.recurrent.tasks` — Copy, Repeat Copy (with curricula) and Tiny Shakespeare;
* the experiment, ``sgjax reproduce dni-rnn``, is :mod:`sgjax.apps.experiments.rnn` (an app), its
  speed and memory benchmark :mod:`sgjax.apps.bench.recurrent_speed` (``sgjax bench
  --only recurrent``).
"""
