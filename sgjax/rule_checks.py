"""The checks at a rule's entry, shared by every rule of :mod:`sgjax.rules`: the rule
state against the network (:func:`check_state`, and :func:`_checked`, which runs it once
per network), the SG boundaries ``at`` (:func:`resolve_at`) and the FA/DFA feedback
matrices (their shapes, and their draw when none are given); and :func:`_after`, which
ties an SG module's label term to its activation.

Feedback-matrix conventions (to compare with other implementations on identical
matrices): ``B`` is a sequence indexed by hidden boundary, ``B[k]`` producing the signal at
boundary ``k + 1``.

* FA: ``B[k]`` has the shape of ``W_{k+2}ᵀ``, i.e. ``(width of h_{k+2}, width of h_{k+1})``
  and sends the error at stage k+2's pre-activation down to h_{k+1}; ``B[k] = W_{k+2}ᵀ``
  recovers backprop.
* DFA: ``B[k]`` has shape ``(width of p, width of h_{k+1})`` and maps ∂ℓ/∂p straight to
  h_{k+1}; Kickback is DFA with every ``B[k]`` a matrix of ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sgjax.nets import Network
from sgjax.sweep import RuleOutput, RuleState

# --------------------------------------------------------------------------------------
# The rule state is checked at the rule's entry: a state made for another network or by
# another rule otherwise fails deep inside JAX (``dot_general``, broadcasting, an index).

_PART_NAMES = {
    "params": ("SG module", "SG modules"),
    "fixed": ("feedback matrix", "feedback matrices"),
}


def _count(n: int, part: str) -> str:
    one, many = _PART_NAMES[part]
    return f"{n} {one if n == 1 else many}"


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {
        jax.tree_util.keystr(path): tuple(jnp.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def check_state(
    name: str, init: Callable[[jax.Array, Network], RuleState], state: Any, net: Network
) -> None:
    """Raise a clear error if ``state`` is not what ``init(key, net)`` makes (shapes only).

    Compares the number of SG modules (``state.params``) and feedback matrices
    (``state.fixed``) and every array's shape with those ``init`` gives for ``net``, and
    names what differs. Every rule's ``gradients`` calls it first (at trace time under
    ``jax.jit``: no cost per step). ``()`` stands for the empty ``RuleState()``.

    Example:
        >>> import jax
        >>> from sgjax import nets
        >>> from sgjax.rules import synthetic_gradients
        >>> rule = synthetic_gradients()
        >>> state = rule.init(jax.random.key(0), nets.mlp([4, 16, 3]))
        >>> check_state("sg", rule.init, state, nets.mlp([4, 8, 3]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: sg: the rule state does not fit this network: `state.params[0]['A']` has \
shape (16, 16), this network needs (8, 8); ...
    """
    if isinstance(state, tuple) and not isinstance(state, RuleState) and len(state) == 0:
        state = RuleState()
    if not isinstance(state, RuleState):
        raise TypeError(
            f"{name}: the rule state must be the RuleState that `rule.init(key, net)` "
            f"returns, got {type(state).__name__}"
        )
    try:
        want = jax.eval_shape(lambda k: init(k, net), jax.random.key(0))
    except jax.errors.ConcretizationTypeError:
        # an init that checks values (e.g. an NNX SG module's zero output): run it for real
        with jax.ensure_compile_time_eval():
            want = init(jax.random.key(0), net)
    counts = {part: (_len(getattr(state, part)), _len(getattr(want, part))) for part in _PART_NAMES}
    if any(got != need for got, need in counts.values()):
        have = " and ".join(_count(g, p) for p, (g, _) in counts.items())
        need = " and ".join(_count(n, p) for p, (_, n) in counts.items())
        raise ValueError(
            f"{name}: the rule state holds {have}, but {name} on this {net.depth}-stage "
            f"network needs {need}; was the state made by another rule's `init`, or for "
            "another network?"
        )
    problems = []
    for part in ("params", "fixed"):
        got_s, need_s = _shapes(getattr(state, part)), _shapes(getattr(want, part))
        for k in need_s.keys() | got_s.keys():
            if k not in got_s:
                problems.append(f"`state.{part}{k}` is missing")
            elif k not in need_s:
                problems.append(f"`state.{part}{k}` is not part of this rule's state")
            elif got_s[k] != need_s[k]:
                problems.append(
                    f"`state.{part}{k}` has shape {got_s[k]}, this network needs {need_s[k]}"
                )
    if problems:
        problems.sort()
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(
            f"{name}: the rule state does not fit this network: {'; '.join(problems[:3])}"
            f"{more}; was the state made by `rule.init(key, net)` for another network?"
        )


def _len(x: Any) -> int:
    # SG modules and feedback matrices come as a sequence, one entry each
    return len(x) if isinstance(x, tuple | list) else len(jax.tree.leaves(x))


def _checked(name: str, init: Callable, gradients: Callable) -> Callable[..., RuleOutput]:
    """``gradients`` behind :func:`check_state` (cached per network, shapes only)."""
    seen: dict[Any, Any] = {}

    def checked(state, net, params, x, y, loss) -> RuleOutput:
        key: Any = (net, repr(_shapes(getattr(state, "params", ()))),
                    repr(_shapes(getattr(state, "fixed", ()))))  # fmt: skip
        try:
            hit = key in seen
        except TypeError:  # a network holding something unhashable: check every time
            hit = False
            key = None
        if not hit:
            check_state(name, init, state, net)
            if key is not None:
                if len(seen) > 16:
                    seen.clear()
                seen[key] = True
        return gradients(state, net, params, x, y, loss)

    return checked


def resolve_at(at: int | str | Sequence[int] | None, depth: int) -> tuple[int, ...]:
    """Boundaries (1..N) that carry an SG module."""
    if at is None or (isinstance(at, str) and at == "all"):
        boundaries: tuple[int, ...] = tuple(range(1, depth))
    elif isinstance(at, str):
        if at == "middle":
            boundaries = ((depth + 1) // 2,)
        elif at == "output":
            boundaries = (depth,)
        else:
            raise ValueError(
                f"synthetic_gradients: `at` must be 'all', 'middle', 'output', an int or a "
                f"sequence of ints in 1..{depth}, got {at!r}"
            )
    else:
        raw = (at,) if isinstance(at, int) else tuple(at)
        for b in raw:
            if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= depth:
                raise ValueError(
                    f"synthetic_gradients: `at` entries must be ints in 1..{depth} (boundary "
                    f"i is the output of stage i; {depth} is the network output), got {b!r}"
                )
        boundaries = tuple(sorted(set(raw)))
    if not boundaries:
        raise ValueError(
            f"synthetic_gradients: the network has {depth} stage(s), so there is no hidden "
            "boundary to put an SG module at; pass at='output' to put one between p and L"
        )
    return boundaries


def _check_matrices(rule: str, B: Sequence[jax.Array], shapes: Sequence[tuple[int, int]]):
    if len(B) != len(shapes):
        raise ValueError(
            f"{rule}: `B` must hold one matrix per hidden boundary ({len(shapes)}), got {len(B)}"
        )
    for k, (m, shape) in enumerate(zip(B, shapes)):
        if tuple(jnp.shape(m)) != tuple(shape):
            raise ValueError(
                f"{rule}: `B[{k}]` (signal at boundary {k + 1}) must have shape {shape}, "
                f"got {tuple(jnp.shape(m))}"
            )
    return tuple(jnp.asarray(m) for m in B)


def _width(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _draw(key: jax.Array, shapes: Sequence[tuple[int, int]], dtype) -> tuple[jax.Array, ...]:
    # N(0, 1/fan_in) where fan_in is the width of the error being sent back: the backward
    # signal keeps the scale that LeCun-initialised forward weights would give it.
    keys = jax.random.split(key, max(len(shapes), 1))
    return tuple(
        jax.random.normal(k, s, dtype) / jnp.sqrt(jnp.asarray(s[0], dtype))
        for k, s in zip(keys, shapes)
    )


def _param_dtype(net: Network):
    leaves = jax.tree.leaves(jax.eval_shape(net.stages[0].init, jax.random.key(0)))
    return jnp.result_type(*leaves) if leaves else jnp.float32


def _after(y_vec: jax.Array, h: jax.Array) -> jax.Array:
    """``y_vec``, made to depend on ``h``: ``y_vec + 0 · h[:, :1]``.

    An SG module's label term ``y B`` needs only the labels, so XLA's CPU scheduler
    computes it for every module at the start of the step and keeps N activation-sized
    results alive to the end (``jax.lax.optimization_barrier`` did not stop it on CPU).
    Tied to h_b, it is computed when stage b has run and dies with it, which
    is what lets SG free activations early. ``0 · x`` is not folded for floats (it is
    NaN for non-finite x), so the values are unchanged wherever h is finite; where it is
    not, a module that reads h (``hA + yB + C``) had a non-finite output already.
    """
    tie = jax.lax.stop_gradient(h.reshape(h.shape[0], -1)[:, :1]) * 0
    return y_vec + tie.astype(y_vec.dtype).reshape((h.shape[0],) + (1,) * (y_vec.ndim - 1))
