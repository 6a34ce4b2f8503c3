"""Update rules: every method of the paper's Table 1 as a choice of error signal δ̂.

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

The feedback-matrix conventions of FA and DFA (``B[k]`` produces the signal at boundary
k + 1) are in :mod:`sgjax.rule_checks`.

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

The Table 1 rows live in :mod:`sgjax.table1` and the checks at a rule's entry (the state
against the network, ``at``, the feedback matrices) in :mod:`sgjax.rule_checks`; both are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sgjax import estimators as est_lib
from sgjax import losses as loss_lib
from sgjax import sgmodule
from sgjax.nets import Network
from sgjax.rule_checks import (
    _after,
    _check_matrices,
    _checked,
    _draw,
    _param_dtype,
    _width,
    resolve_at,
)
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
from sgjax.table1 import (
    Table1Context,
    Table1Row,
    _row_backprop,
    _row_dfa,
    _row_fa,
    _row_kickback,
    _row_sg,
    row_errors,
    table1_signal,
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
    hashable_at = at if at is None or isinstance(at, int | str) else tuple(at)
    built = dict(estimator=estimator, at=hashable_at, targets=targets, prop=alpha)
    built["sg_optimizer"] = sg_optimizer
    return UpdateRule(
        init,
        _checked(name, init, gradients),
        name,
        lambda net: resolve_at(at, net.depth),
        update,
        bind if sg_optimizer is None else None,
        tuple(built.items()),  # what it was built with (the pipelines read it)
    )


def feedback_alignment(B: Sequence[jax.Array] | None = None) -> UpdateRule:
    """Feedback alignment (Lillicrap et al.): errors go down through fixed random matrices.

    δ̂_i = (δ̂_{i+1} through stage i+1's activation) · B_i, with B_i of the shape of
    W_{i+1}ᵀ. Drawn with ``init``'s key unless supplied (see :mod:`sgjax.rule_checks` for
    the shape convention). Needs stages with ``feedback_apply`` (dense stages have it).

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
    rule = s.build(**resolved)
    return row_errors(s.table1, resolved, rule, state, net, params, x, y, loss_lib.get(loss))
