"""The errors of training: a non-finite step, refused labels, an interrupted loop; and
:func:`check_step`, which turns a step's metrics into them (for hand-written loops)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sgjax.train.step import TrainState


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`loop`: ``state`` is the state after the last finished step.

    A :class:`KeyboardInterrupt`, so that code that does not know it still stops; the
    runner saves ``state`` to the checkpoint directory and sets ``checkpoint_step``.
    """

    __module__ = "sgjax.train"  # its public name (re-exported there)

    def __init__(self, state: TrainState):
        super().__init__(f"interrupted after step {int(state.step)}")
        self.state = state
        self.step = int(state.step)
        #: the newest checkpoint of the run, when it was checkpointed (set by the runner)
        self.checkpoint_step: int | None = None
        self.checkpoint_dir: str | None = None


class NonFiniteLossError(FloatingPointError):
    """Raised by :func:`fit` when a step produced a non-finite loss, gradient or state.

    ``parts`` names what became non-finite (see :func:`nonfinite_parts`), when known.
    """

    __module__ = "sgjax.train"  # its public name (re-exported there)

    def __init__(
        self,
        step: int,
        loss: float,
        state: TrainState | None,
        parts: list[str] | None = None,
        advice: str | None = None,
    ):
        if parts:
            what = f"{', '.join(parts)} became non-finite (the loss was {loss})"
        elif parts is None:
            what = f"the loss or a gradient became non-finite (loss = {loss})"
        else:
            what = (
                f"a value became non-finite inside the compiled step (loss = {loss}); "
                "recomputed outside it, every part was finite (a borderline overflow)"
            )
        if advice is None:
            advice = "Lower the learning rates, or check the inputs for NaN/inf."
        at = f"step {step}" if step >= 0 else "a step"
        #: what happened and what to do, without the Python-only hint about ``err.state``
        self.summary = f"{at}: {what}; the update was not applied and training stopped. {advice}"
        self.step = step
        self.loss = loss
        self.state = state
        self.parts = list(parts or [])
        #: the newest checkpoint of the run, when it was checkpointed (set by the runner)
        self.checkpoint_step: int | None = None
        self.details = ""  # e.g. where the checkpoints are (added by the runner)
        super().__init__(str(self))

    def __str__(self) -> str:
        hint = " The last good state is in `err.state`." if self.state is not None else ""
        return f"{self.summary}{hint}{self.details}"

    def add_details(self, text: str) -> None:
        """Append ``text`` (a sentence, with its leading space) to the message."""
        self.details += text
        self.args = (str(self),)

    def cli_message(self) -> str:
        """The message for a command-line user: no ``err.state`` (a Python attribute)."""
        return f"{self.summary}{self.details}"


class BadLabelsError(ValueError):
    """Raised by :func:`check_step` when a batch held labels outside the network's classes."""

    __module__ = "sgjax.train"  # its public name (re-exported there)


def check_step(metrics: dict[str, Any], step: int | None = None) -> None:
    """Raise if a step's metrics say its update was refused (for hand-written loops).

    Raises :class:`BadLabelsError` when the batch held labels outside the network's
    classes, :class:`NonFiniteLossError` when the loss, a gradient or the new state was
    not finite. In both cases the step returned the state unchanged. Works on the
    metrics of a vmapped step too (any seed failing raises). It reads two scalars back
    from the device, i.e. waits for the step to finish.

    Example:
        >>> check_step({"finite": True, "bad_labels": 2, "loss": 0.0}, step=7)
        Traceback (most recent call last):
        ...
        sgjax.train.BadLabelsError: step 7: 2 label(s) of the batch lie outside the network's classes; the update was not applied. Check the labels (integers in [0, classes)).
    """  # noqa: E501
    where = f"step {step}: " if step is not None else ""
    bad = np.asarray(metrics.get("bad_labels", 0))
    finite = np.asarray(metrics["finite"])
    loss = np.asarray(metrics["loss"])
    if bad.ndim:  # vmapped over seeds: name each seed that failed, with its own count
        idx = [int(i) for i in np.flatnonzero(bad.reshape(-1))]
        if idx:
            counts = ", ".join(f"seed index {i}: {int(bad.reshape(-1)[i])}" for i in idx)
            raise BadLabelsError(
                f"{where}label(s) of the batch lie outside the network's classes ({counts}; of "
                f"{bad.size} vmapped seeds); the update was not applied. Check the labels "
                "(integers in [0, classes))."
            )
    elif int(bad):
        raise BadLabelsError(
            f"{where}{int(bad)} label(s) of the batch lie outside the network's classes; the "
            "update was not applied. Check the labels (integers in [0, classes))."
        )
    if not bool(np.all(finite)):
        at = -1 if step is None else step
        if finite.ndim == 0:
            raise NonFiniteLossError(at, float(loss.reshape(-1)[0]) if loss.size else 0.0, None)
        idx = [int(i) for i in np.flatnonzero(~finite.reshape(-1))]
        losses = loss.reshape(-1) if loss.size == finite.size else np.full(finite.size, np.nan)
        which = "seed index" if len(idx) == 1 else "seed indices"
        err = NonFiniteLossError(
            at,
            float(losses[idx[0]]),
            None,
            [
                f"the loss or a gradient of {which} {', '.join(map(str, idx))} (of "
                f"{finite.size} vmapped seeds; losses: "
                + ", ".join(f"{float(losses[i])}" for i in idx[:5])
                + ")"
            ],
        )
        err.seeds = idx  # type: ignore[attr-defined]
        raise err
