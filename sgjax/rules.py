"""Update rules: every method of the paper's Table 1 as a choice of error signal δ̂.

(Over 400 lines on purpose: the six rules, their Table 1 rows and the registry that
names them are read together; the machinery they share is in :mod:`sgjax.sweep`.)

Czarnecki et al. (2017, §6, Table 1) observe that backprop, synthetic gradients (SG),
SG + prop, feedback alignment (FA), direct feedback alignment (DFA) and Kickback all
train each stage with the chain rule *inside* the stage and differ only in the signal δ̂_i
that replaces ∂L/∂h_i at the stage's output. One training step is therefore

1. forward, keeping one VJP per stage: ``h_i, vjp_i = jax.vjp(f_i, θ_i, h_{i-1})``;
2. going down from the output, the rule turns the gradient arriving at boundary i —
   ``g_i``, the input part of ``vjp_{i+1}(δ̂_{i+1})`` (``g_N = ∂ℓ/∂p``) — into the
   signal δ̂_i it wants stage i to follow;
3. ``vjp_i(δ̂_i)`` gives stage i's parameter gradient *and* ``g_{i-1}`` in one call.

Signals are **per example** (∂ℓ_b/∂h_b, independent of the batch size); parameter
gradients are those of the batch-mean loss. Boundaries are numbered like the paper's
layers: boundary i is h_i, the output of stage i, for i = 1..N (boundary N is the
output p).

========================  ===========================================  =================
rule                      δ̂_i                                          trains a module
========================  ===========================================  =================
:func:`backprop`          g_i (exact ∂ℓ/∂h_i)                          no
:func:`synthetic_gradients`  SG_i(h_i, y) [+ α ∂ℓ_SG/∂h_i]             SG_i → target t_i
:func:`feedback_alignment`   g_i computed with B_{i}ᵀ in place of W_{i+1}  no (B fixed)
:func:`direct_feedback_alignment`  (∂ℓ/∂p) B_i                         no (B fixed)
:func:`kickback`          (∂ℓ/∂p) **1**                                no
========================  ===========================================  =================

The SG target is ``t_i = g_i`` (``targets="bootstrap"``: the SG above, backpropagated
through the stages in between — the DNI paper's bootstrapping) or the true ∂ℓ/∂h_i
(``targets="true"``, "direct" SG). Targets are always stop-gradiented. SG modules sit at
every hidden boundary by default, or at the boundaries named by ``at``; stages between
modules train by exact backprop from the module above, as in the paper's single-SG
experiments.

A rule is an :class:`UpdateRule`, a NamedTuple of pure functions in the manner of optax:

* ``init(key, net) -> RuleState`` — trainable module parameters (``RuleState.params``)
  with the state of the rule's own optimiser for them (``RuleState.opt_state``), and fixed
  state (``RuleState.fixed``: the random feedback matrices of FA/DFA);
* ``gradients(state, net, params, x, y, loss) -> RuleOutput`` — the parameter gradients
  of every stage, the gradients of the modules' regression losses, the signals and the
  per-module SG losses;
* ``update(state, rule_grads) -> RuleState`` — one step of the rule's own optimiser on its
  modules (SG rules only: the rule owns its SG optimiser, ``sg_optimizer``).

State lives outside the functions so that ``jax.jit``, ``jax.vmap`` (over seeds) and
``jax.shard_map`` compose with a rule without special cases.

Feedback-matrix conventions (to compare with other implementations on identical
matrices): ``B`` is a sequence indexed by hidden boundary, ``B[k]`` producing the signal at
boundary ``k + 1``.

* FA: ``B[k]`` has the shape of ``W_{k+2}ᵀ``, i.e. ``(width of h_{k+2}, width of h_{k+1})``
  and sends the error at stage k+2's pre-activation down to h_{k+1}; ``B[k] = W_{k+2}ᵀ``
  recovers backprop.
* DFA: ``B[k]`` has shape ``(width of p, width of h_{k+1})`` and maps ∂ℓ/∂p straight to
  h_{k+1}; Kickback is DFA with every ``B[k]`` a matrix of ones.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from sgjax import nets, losses, rules
    >>> net = nets.mlp([4, 8, 3])
    >>> params = net.init(jax.random.key(0))
    >>> rule = rules.synthetic_gradients()
    >>> state = rule.init(jax.random.key(1), net)
    >>> out = rule.gradients(state, net, params, jnp.ones((2, 4)), jnp.array([0, 2]),
    ...                      losses.softmax_cross_entropy)
    >>> float(jnp.abs(out.grads[0]["W"]).max())  # the zero-initialised SG sends nothing
    0.0

Size: over 600 lines — the six rules, their Table 1 rows and the registry. The Table 1
section (:class:`Table1Row`, :class:`Table1Context`, :func:`table1_signal`,
:func:`table1_errors`, about 150 lines) is the piece to move out; each rule's row is
registered with it at import, so it moves once :class:`Table1Row` has a lower module of
its own (the registry would otherwise import it back).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sgjax import estimators as est_lib
from sgjax import losses as loss_lib
from sgjax import sgmodule
from sgjax.nets import Network
from sgjax.sweep import (
    RuleOutput,
    RuleState,
    SignalFn,
    UpdateRule,
    apply_rule_update,
    bind,
    exact_signals,
    pass_through,
    sweep,
)

__all__ = [
    "RULES",
    "RuleOutput",
    "RuleSpec",
    "RuleState",
    "SignalFn",
    "Table1Context",
    "Table1Row",
    "UpdateRule",
    "apply_rule_update",
    "backprop",
    "bind",
    "direct_feedback_alignment",
    "exact_signals",
    "feedback_alignment",
    "get",
    "kickback",
    "register",
    "resolve_at",
    "spec",
    "sweep",
    "synthetic_gradients",
    "table1_errors",
    "table1_signal",
]

Params = Any
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


# --------------------------------------------------------------------------------------
# The rules.


def backprop() -> UpdateRule:
    """Exact backpropagation: δ̂_i = ∂ℓ/∂h_i.

    In the unified view: SG(h) = h, t = −∂ℓ/∂h, L_SG = −⟨t, s⟩ (Table 1, "Bprop").

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import nets, losses
        >>> net = nets.mlp([3, 4, 2]); params = net.init(jax.random.key(0))
        >>> x, y = jnp.ones((5, 3)), jnp.array([0, 1, 0, 1, 1])
        >>> out = backprop().gradients((), net, params, x, y, losses.mse)
        >>> g = jax.grad(lambda p: losses.mse.fn(net.apply(p, x), y))(params)
        >>> bool(jnp.allclose(out.grads[0]["W"], g[0]["W"], atol=1e-6))
        True
    """

    def init(key: jax.Array, net: Network) -> RuleState:
        del key, net
        return RuleState()

    def gradients(state, net, params, x, y, loss) -> RuleOutput:
        del state
        loss = loss_lib.get(loss)
        value, p, grads, signals, _ = sweep(net, params, x, y, loss, pass_through)
        return RuleOutput(value, p, grads, (), signals, jnp.zeros((0,), p.dtype))

    return UpdateRule(init, _checked("backprop", init, gradients), "backprop")


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


def synthetic_gradients(
    estimator: str | est_lib.Estimator = "conditioned",
    *,
    at: int | str | Sequence[int] | None = None,
    targets: str = "bootstrap",
    prop: float = 0.0,
    sg_optimizer: optax.GradientTransformation | None = None,
) -> UpdateRule:
    """Synthetic gradients / DNI: stage i follows δ̂_i = SG_i(h_i, y).

    Args:
        estimator: the SG module (an :class:`~sgjax.estimators.Estimator` or its name);
            default the label-conditioned linear SG ``hA + yB + C`` (cDNI), zero-initialised.
        at: where SG modules sit: ``None``/``"all"`` every hidden boundary (SG* in the
            paper), ``"middle"`` one module at boundary ⌈N/2⌉ (the paper's single SG: for a
            20-hidden-layer net, between layers 11 and 12), ``"output"`` between p and
            the loss (Theorem 1, Table 2), or explicit boundary numbers in 1..N.
        targets: ``"bootstrap"`` — SG_i regresses onto the gradient backpropagated from the
            module above (DNI); ``"true"`` — onto the true ∂ℓ/∂h_i (direct SG; needs a full
            backward pass, so it is update-locked: a reference, not a decoupled method).
        prop: α ≥ 0 of SG + prop: the lower network follows SG(h, y) + α ∂ℓ_SG/∂h.
        sg_optimizer: the optax transformation that trains the SG modules; the rule owns
            it and its state (``RuleState.opt_state``, one state per module, so a module
            skipped by ``p_update`` keeps its own). Default ``None``: **the network's
            optimiser** — the very transformation passed to :func:`sgjax.train.init` /
            :func:`~sgjax.train.make_step` / :func:`~sgjax.train.fit` / the runner (same
            kind, same learning rate or schedule), bound by :func:`sgjax.sweep.bind`; the
            modules still get their own state. (The command line's default is its own:
            ``--sg-optimizer adam --sg-lr 1e-3``.)

    Each module is an :class:`sgjax.sgmodule.SGModule`; its loss is
    ``mean_b ‖t_b − SG(h_b, y_b)‖²`` (:func:`sgjax.sgmodule.regress`), its gradients come
    back in ``RuleOutput.rule_grads`` and ``rule.update(state, rule_grads)`` applies one
    step of ``sg_optimizer`` (the training step calls it).

    Example:
        >>> import jax
        >>> from sgjax import nets
        >>> net = nets.mlp([4, 8, 8, 8, 3])  # 4 stages, hidden boundaries 1..3
        >>> len(synthetic_gradients(at="all").init(jax.random.key(0), net).params)
        3
        >>> len(synthetic_gradients(at="middle").init(jax.random.key(0), net).params)
        1
    """
    estimator = est_lib.get(estimator)
    if targets not in ("bootstrap", "true"):
        raise ValueError(
            f"synthetic_gradients: `targets` must be 'bootstrap' or 'true', got {targets!r}"
        )
    if not isinstance(prop, int | float) or not prop >= 0.0:
        raise ValueError(f"synthetic_gradients: `prop` (α) must be a float ≥ 0, got {prop!r}")
    if sg_optimizer is not None and not (
        callable(getattr(sg_optimizer, "init", None))
        and callable(getattr(sg_optimizer, "update", None))
    ):
        raise TypeError(
            "synthetic_gradients: `sg_optimizer` must be an optax GradientTransformation "
            f"(e.g. optax.adam(1e-3)) or None, got {type(sg_optimizer).__name__}"
        )
    alpha = float(prop)
    module = sgmodule.SGModule(estimator, sg_optimizer) if sg_optimizer is not None else None

    def init(key: jax.Array, net: Network) -> RuleState:
        boundaries = resolve_at(at, net.depth)
        keys = jax.random.split(key, len(boundaries))
        dtype = jnp.result_type(*jax.tree.leaves(jax.eval_shape(net.stages[0].init, key)))
        modules = tuple(
            estimator.init(k, net.stages[b - 1].out_shape, net.out_dim, dtype)
            for k, b in zip(keys, boundaries)
        )
        if sg_optimizer is None:  # unbound: train.init binds the network's optimiser
            return RuleState(params=modules)
        return RuleState(params=modules, opt_state=tuple(sg_optimizer.init(m) for m in modules))

    def update(state: RuleState, rule_grads: Any) -> RuleState:
        if module is None:
            raise ValueError(
                "synthetic_gradients: this rule has no `sg_optimizer` to train its SG modules "
                "with; train it through sgjax.train (init, make_step, fit: they default it to "
                "the network's optimiser), or build it with "
                "`synthetic_gradients(..., sg_optimizer=optax.adam(1e-3))` or bind one with "
                "`sgjax.sweep.bind(rule, optimizer)`"
            )
        if not isinstance(state.opt_state, tuple) or len(state.opt_state) != len(state.params):
            n = len(state.opt_state) if isinstance(state.opt_state, tuple) else "no tuple of"
            raise ValueError(
                f"synthetic_gradients: the rule state holds {len(state.params)} SG modules but "
                f"{n} optimiser states; was it made by this rule's `init` (one bound to its "
                "SG optimiser)?"
            )
        new = [
            module.update(sgmodule.SGState(p, o), g)
            for p, o, g in zip(state.params, state.opt_state, rule_grads)
        ]
        return state._replace(
            params=tuple(m.params for m in new), opt_state=tuple(m.opt_state for m in new)
        )

    def gradients(state, net, params, x, y, loss) -> RuleOutput:
        loss = loss_lib.get(loss)
        boundaries = resolve_at(at, net.depth)
        if len(state.params) != len(boundaries):
            raise ValueError(
                f"synthetic_gradients: the rule state holds {len(state.params)} SG modules "
                f"but the network has {len(boundaries)} boundaries {boundaries} to fill; was "
                "the state made with `rule.init(key, net)` for this network?"
            )
        slot = {b: k for k, b in enumerate(boundaries)}

        def signal(b, h, g, y_vec, e, g_true):
            del e
            if b not in slot:
                return g, None
            theta = state.params[slot[b]]
            t = g_true if targets == "true" else g
            # Only for modules that read h: there a non-finite h_b makes the output
            # non-finite anyway, so the tie changes no value (see _after).
            y_b = _after(y_vec, h) if estimator.uses_h and estimator.uses_y else y_vec
            reg = sgmodule.regress(estimator, theta, h, y_b, t)
            delta = jax.lax.stop_gradient(reg.s)
            if alpha:
                # reg.grad_h times the batch size is the per-example ∂ℓ_SG,b/∂h_b.
                delta = delta + alpha * h.shape[0] * reg.grad_h
            return delta, (reg.grad_params, reg.loss)

        value, p, grads, signals, aux = sweep(
            net, params, x, y, loss, signal, exact=targets == "true"
        )
        rule_grads = tuple(aux[b][0] for b in boundaries)
        sg_loss = jnp.stack([aux[b][1] for b in boundaries])
        return RuleOutput(value, p, grads, rule_grads, signals, sg_loss)

    def bind(optimizer: optax.GradientTransformation) -> UpdateRule:
        return synthetic_gradients(
            estimator, at=at, targets=targets, prop=prop, sg_optimizer=optimizer
        )

    name = "sg-prop" if alpha else "sg"
    return UpdateRule(
        init,
        _checked(name, init, gradients),
        name,
        lambda net: resolve_at(at, net.depth),
        update,
        bind if sg_optimizer is None else None,
    )


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


def feedback_alignment(B: Sequence[jax.Array] | None = None) -> UpdateRule:
    """Feedback alignment (Lillicrap et al.): errors go down through fixed random matrices.

    δ̂_i = (δ̂_{i+1} through stage i+1's activation) · B_i, with B_i of the shape of
    W_{i+1}ᵀ. Drawn with ``init``'s key unless supplied (see the module docstring for the
    shape convention). Needs stages with ``feedback_apply`` (dense stages have it).

    Example:
        >>> import jax
        >>> from sgjax import nets
        >>> net = nets.mlp([4, 8, 6, 3])
        >>> [m.shape for m in feedback_alignment().init(jax.random.key(0), net).fixed]
        [(6, 8), (3, 6)]
    """

    def shapes(net: Network) -> list[tuple[int, int]]:
        return [(_width(s.out_shape), _width(s.in_shape)) for s in net.stages[1:]]

    def init(key: jax.Array, net: Network) -> RuleState:
        for i, s in enumerate(net.stages[1:], start=2):
            if s.feedback_apply is None:
                raise TypeError(
                    f"feedback_alignment: stage {i} ({s.name}) has no `feedback_apply`, so "
                    "its error cannot be sent through a feedback matrix"
                )
        if B is None:
            return RuleState(fixed=_draw(key, shapes(net), _param_dtype(net)))
        return RuleState(fixed=_check_matrices("feedback_alignment", B, shapes(net)))

    def gradients(state, net, params, x, y, loss) -> RuleOutput:
        loss = loss_lib.get(loss)
        fns = [net.stages[0].apply]
        for s, m in zip(net.stages[1:], state.fixed):
            fns.append(lambda theta, h, s=s, m=m: s.feedback_apply(theta, m, h))
        value, p, grads, signals, _ = sweep(net, params, x, y, loss, pass_through, fns)
        return RuleOutput(value, p, grads, (), signals, jnp.zeros((0,), p.dtype))

    return UpdateRule(init, _checked("fa", init, gradients), "fa")


def _direct(name: str, B: Sequence[jax.Array] | None, ones: bool) -> UpdateRule:
    def shapes(net: Network) -> list[tuple[int, int]]:
        return [(net.out_dim, _width(s.out_shape)) for s in net.stages[:-1]]

    def init(key: jax.Array, net: Network) -> RuleState:
        if ones:
            return RuleState()
        if B is None:
            return RuleState(fixed=_draw(key, shapes(net), _param_dtype(net)))
        return RuleState(fixed=_check_matrices(name, B, shapes(net)))

    def gradients(state, net, params, x, y, loss) -> RuleOutput:
        loss = loss_lib.get(loss)

        def signal(b, h, g, y_vec, e, g_true):
            del g, y_vec, g_true
            if b == net.depth:
                return e, None
            e_flat = e.reshape(e.shape[0], -1)
            if ones:  # e · 1: every unit of h_b receives the sum of the output errors
                d = jnp.broadcast_to(jnp.sum(e_flat, -1, keepdims=True), (e.shape[0], h[0].size))
            else:
                d = e_flat @ state.fixed[b - 1]
            return d.reshape(h.shape), None

        value, p, grads, signals, _ = sweep(net, params, x, y, loss, signal)
        return RuleOutput(value, p, grads, (), signals, jnp.zeros((0,), p.dtype))

    return UpdateRule(init, _checked(name, init, gradients), name)


def direct_feedback_alignment(B: Sequence[jax.Array] | None = None) -> UpdateRule:
    """Direct feedback alignment (Nøkland): δ̂_i = (∂ℓ/∂p) B_i, B_i fixed random.

    ``B[k]`` has shape ``(width of p, width of h_{k+1})``; drawn with ``init``'s key unless
    supplied. With one hidden layer and ``B[0] = W_outᵀ`` this is exactly backprop.

    Example:
        >>> import jax
        >>> from sgjax import nets
        >>> net = nets.mlp([4, 8, 6, 3])
        >>> [m.shape for m in direct_feedback_alignment().init(jax.random.key(0), net).fixed]
        [(3, 8), (3, 6)]
    """
    return _direct("dfa", B, ones=False)


def kickback() -> UpdateRule:
    """Kickback (Balduzzi et al.): δ̂_i = (∂ℓ/∂p) **1**, i.e. DFA with B = ones (Table 1).

    Every unit of h_i receives Σ_k ∂ℓ/∂p_k. Kickback was made for a single output; with
    softmax cross-entropy that sum is exactly 0 (Σ softmax = Σ one-hot = 1), so the hidden
    stages receive no signal at all — only float rounding residue, which an adaptive
    optimiser such as Adam rescales into steps of full size. Use it with MSE or a single
    output.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import nets, losses
        >>> net = nets.mlp([3, 4, 2]); params = net.init(jax.random.key(0))
        >>> out = kickback().gradients((), net, params, jnp.ones((2, 3)), jnp.zeros((2, 2)),
        ...                            losses.mse)
        >>> bool(jnp.all(out.signals[0] == out.signals[0][:, :1]))  # one value per example
        True
    """
    return _direct("kickback", None, ones=True)


# --------------------------------------------------------------------------------------
# Table 1 as data: each rule's (SG, target, L_SG) triple at a hidden boundary.


def _neg_inner(t: jax.Array, s: jax.Array) -> jax.Array:
    return -jnp.sum(t * s)


def _sq_dist(t: jax.Array, s: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(t - s))


class Table1Row(NamedTuple):
    """One cell of the paper's Table 1: the rule's signal at one boundary as an SG loss.

    The signal is ``∂/∂h L_SG(t, SG(h))`` with the target ``t`` held constant — or, for the
    SG rules (``follows_sg``), ``SG(h) + prop · ∂/∂h L_SG(t, SG(h))``. ``l_sg`` is summed
    over the batch, so its gradient is per example. :func:`table1_signal` evaluates it.
    """

    sg: Callable[[jax.Array], jax.Array]
    target: jax.Array
    l_sg: Callable[[jax.Array, jax.Array], jax.Array]
    follows_sg: bool = False
    prop: float = 1.0


class Table1Context(NamedTuple):
    """What a rule's Table 1 row may refer to (one batch, one rule state)."""

    net: Network
    params: Sequence[Params]
    state: RuleState
    hs: list  # [x, h_1, ..., h_N = p]
    signals: tuple  # the rule's own δ̂_1..δ̂_N
    exact: tuple  # true ∂ℓ/∂h_1..∂ℓ/∂h_N
    y_vec: jax.Array


def table1_signal(row: Table1Row, h: jax.Array) -> jax.Array:
    """The signal a :class:`Table1Row` prescribes at activation ``h``.

    Example:
        >>> import jax.numpy as jnp
        >>> row = Table1Row(sg=lambda h: h, target=-jnp.ones((1, 2)), l_sg=_neg_inner)
        >>> table1_signal(row, jnp.zeros((1, 2))).tolist()  # Bprop: δ̂ = −t = ∂L/∂h
        [[1.0, 1.0]]
    """
    grad = jax.grad(lambda hh: row.l_sg(jax.lax.stop_gradient(row.target), row.sg(hh)))(h)
    return row.sg(h) + row.prop * grad if row.follows_sg else grad


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1)


def _row_backprop(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    return Table1Row(lambda h: h, -c.exact[b - 1], _neg_inner)  # SG(h) = h, t = −∂L/∂h


def _row_fa(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    # SG(h) = the stage above with B_b in place of Wᵀ in its backward pass (hA through the
    # activation), t = −(the FA signal above).
    stage, theta, B = c.net.stages[b], c.params[b], c.state.fixed[b - 1]
    fb = stage.feedback_apply
    assert fb is not None  # feedback_alignment.init refuses stages without it
    return Table1Row(lambda h: fb(theta, B, h), -c.signals[b], _neg_inner)


def _row_dfa(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    B = c.state.fixed[b - 1]  # SG(h) = hA with A = Bᵀ, t = −∂L/∂p
    return Table1Row(lambda h: _flat(h) @ B.T, -_flat(c.exact[-1]), _neg_inner)


def _row_kickback(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    e = _flat(c.exact[-1])  # SG(h) = h1, t = −∂L/∂p
    return Table1Row(lambda h: _flat(h) @ jnp.ones((_flat(h).shape[1], e.shape[1])), -e, _neg_inner)


def _row_sg(c: Table1Context, b: int, options: Mapping[str, Any]) -> Table1Row:
    boundaries = resolve_at(options.get("at"), c.net.depth)
    # The gradient arriving at b: the signal above sent through the stage above.
    _, vjp = jax.vjp(lambda h: c.net.stages[b].apply(c.params[b], h), c.hs[b])
    arriving = vjp(c.signals[b])[0]
    if b not in boundaries:  # exact backprop from the module above: SG(h) = h, t = −g
        return Table1Row(lambda h: h, -arriving, _neg_inner)
    estimator = est_lib.get(options.get("estimator", "conditioned"))
    theta = c.state.params[boundaries.index(b)]
    t = c.exact[b - 1] if options.get("targets") == "true" else arriving
    return Table1Row(
        lambda h: estimator.apply(theta, h, c.y_vec),
        t,
        _sq_dist,
        follows_sg=True,
        prop=float(options.get("prop", 0.0)),
    )


# --------------------------------------------------------------------------------------
# The registry: one entry per rule. The CLI's --rule choices and the options each rule
# accepts, the bench's rows, the docs' table and the contract suite all derive from it.


@dataclass(frozen=True, eq=False)
class RuleSpec:
    """A registered rule.

    Attributes:
        name: the command-line name (``sgjax train --rule NAME``).
        build: ``build(**options) -> UpdateRule``.
        summary: one line for ``--help`` and the docs (δ̂ in words).
        options: the keyword options ``build`` accepts and their defaults; what
            :func:`get` and the CLI allow for this rule (anything else is refused).
        table1: ``table1(ctx, boundary, options) -> Table1Row``, the rule's Table 1 row.
        trains_modules: the rule trains modules of its own (an SG optimiser applies).
    """

    name: str
    build: Callable[..., UpdateRule]
    summary: str
    options: Mapping[str, Any] = field(default_factory=dict)
    table1: Callable[[Table1Context, int, Mapping[str, Any]], Table1Row] | None = None
    trains_modules: bool = False

    def resolve(self, **options: Any) -> dict[str, Any]:
        """``options`` checked against :attr:`options`, with the defaults filled in."""
        unknown = [k for k in options if k not in self.options]
        if unknown:
            takers = {k: [r.name for r in RULES.values() if k in r.options] for k in unknown}
            where = "; ".join(
                f"`{k}` applies to {', '.join(v) if v else 'no registered rule'}"
                for k, v in takers.items()
            )
            raise ValueError(f"rule {self.name!r} takes no option {unknown[0]!r} ({where})")
        return {**self.options, **options}


_SG_OPTIONS = {
    "estimator": "conditioned",
    "at": "all",
    "targets": "bootstrap",
    "prop": 0.0,
    "sg_optimizer": None,
}


def _sg_prop(**options: Any) -> UpdateRule:
    prop = options.get("prop", 0.1)
    if not isinstance(prop, int | float) or isinstance(prop, bool) or not prop > 0:
        raise ValueError(f"sg-prop: `prop` (α) must be a number > 0, got {prop!r}")
    return synthetic_gradients(**options)


#: name -> :class:`RuleSpec`. Adding a rule is one entry here (or :func:`register`).
RULES: dict[str, RuleSpec] = {
    spec.name: spec
    for spec in (
        RuleSpec("backprop", backprop, "exact ∂L/∂h_i", table1=_row_backprop),
        RuleSpec(
            "sg",
            synthetic_gradients,
            "SG_i(h_i, y), regressed onto the bootstrapped (or true) gradient",
            _SG_OPTIONS,
            _row_sg,
            trains_modules=True,
        ),
        RuleSpec(
            "sg-prop",
            _sg_prop,
            "SG_i(h_i, y) + α ∂L_SG/∂h_i",
            {**_SG_OPTIONS, "prop": 0.1},
            _row_sg,
            trains_modules=True,
        ),
        RuleSpec(
            "fa",
            feedback_alignment,
            "error sent down through fixed random B_i",
            {"B": None},
            _row_fa,
        ),
        RuleSpec("dfa", direct_feedback_alignment, "(∂L/∂p) B_i", {"B": None}, _row_dfa),
        RuleSpec("kickback", kickback, "(∂L/∂p) 1 (DFA with B = ones)", table1=_row_kickback),
    )
}


def register(spec: RuleSpec) -> RuleSpec:
    """Add a rule to :data:`RULES` (replacing one of the same name); returns it.

    Example:
        >>> spec = register(RuleSpec("bp-copy", backprop, "exact ∂L/∂h_i"))
        >>> get("bp-copy").name
        'backprop'
        >>> del RULES["bp-copy"]
    """
    if not isinstance(spec, RuleSpec):
        raise TypeError(f"register: expected a RuleSpec, got {type(spec).__name__}")
    RULES[spec.name] = spec
    return spec


def spec(name: str) -> RuleSpec:
    """The :class:`RuleSpec` registered as ``name``.

    Example:
        >>> spec("sg-prop").options["prop"]
        0.1
    """
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; expected one of {sorted(RULES)}")
    return RULES[name]


def get(name: str, **options: Any) -> UpdateRule:
    """Build a registered rule from its command-line name and keyword options.

    ``sg-prop`` is :func:`synthetic_gradients` with ``prop=0.1`` unless given (the same α
    the CLI uses). An option the rule does not take is an error naming the rules that take it.

    Example:
        >>> get("dfa").name
        'dfa'
        >>> get("dfa", targets="true")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: rule 'dfa' takes no option 'targets' (`targets` applies to sg, sg-prop)
    """
    s = spec(name)
    return s.build(**s.resolve(**options))


def table1_errors(
    name: str,
    state: RuleState,
    net: Network,
    params: Sequence[Params],
    x: jax.Array,
    y: jax.Array,
    loss: loss_lib.Loss | str,
    **options: Any,
) -> jax.Array:
    """Max |δ̂ − Table 1 signal| at each hidden boundary, for the registered rule ``name``.

    The rule is built with ``options`` and run with ``state``; its signals are compared
    with those its Table 1 row (:attr:`RuleSpec.table1`) prescribes. Zero up to rounding
    when the rule is what its row says.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import nets
        >>> net = nets.mlp([3, 5, 4, 2]); params = net.init(jax.random.key(0))
        >>> x, y = jax.random.normal(jax.random.key(1), (6, 3)), jnp.arange(6) % 2
        >>> st = get("dfa").init(jax.random.key(2), net)
        >>> bool(table1_errors("dfa", st, net, params, x, y, "xent").max() < 1e-5)
        True
    """
    s = spec(name)
    if s.table1 is None:
        raise ValueError(f"rule {name!r} has no Table 1 row (RuleSpec.table1)")
    resolved = s.resolve(**options)
    loss = loss_lib.get(loss)
    out = s.build(**resolved).gradients(state, net, params, x, y, loss)
    hs = net.hidden(params, x)
    ctx = Table1Context(
        net,
        params,
        state,
        hs,
        out.signals,
        exact_signals(net, params, x, y, loss),
        loss_lib.as_target(y, net.out_dim, out.p.dtype),
    )
    errs = [
        jnp.max(jnp.abs(table1_signal(s.table1(ctx, b, resolved), hs[b]) - out.signals[b - 1]))
        for b in range(1, net.depth)
    ]
    return jnp.stack(errs) if errs else jnp.zeros((0,))
