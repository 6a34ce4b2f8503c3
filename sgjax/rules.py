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

* ``init(key, net) -> RuleState`` — trainable module parameters (``RuleState.params``,
  optimised by the training step with its own optimiser) and fixed state
  (``RuleState.fixed``: the random feedback matrices of FA/DFA);
* ``gradients(state, net, params, x, y, loss) -> RuleOutput`` — the parameter gradients
  of every stage, the gradients of the modules' regression losses, the signals and the
  per-module SG losses.

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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sgjax import estimators as est_lib
from sgjax import losses as loss_lib
from sgjax.nets import Network, check_input

Params = Any


class RuleState(NamedTuple):
    """State of a rule: ``params`` are trained (SG modules), ``fixed`` are not (FA/DFA)."""

    params: Any = ()
    fixed: Any = ()


class RuleOutput(NamedTuple):
    """What :attr:`UpdateRule.gradients` returns for one batch.

    Attributes:
        loss: the batch-mean loss L(p, y).
        p: the network output.
        grads: per-stage parameter gradients (the network's parameter tree).
        rule_grads: gradients of the SG regression losses w.r.t. ``RuleState.params``.
        signals: per-example δ̂_i for boundaries i = 1..N (``signals[i - 1]``).
        sg_loss: mean ‖t − SG(h, y)‖² of each SG module, shape ``(modules,)``.
    """

    loss: jax.Array
    p: jax.Array
    grads: tuple
    rule_grads: Any
    signals: tuple
    sg_loss: jax.Array


class UpdateRule(NamedTuple):
    """An update rule: ``init(key, net) -> RuleState`` and
    ``gradients(state, net, params, x, y, loss) -> RuleOutput``.

    ``boundaries(net)``, for rules with trainable modules, gives the boundary (1..N) of
    each entry of ``RuleState.params``; :func:`sgjax.train.make_step` uses it to update a
    module together with its stage (``p_update``)."""

    init: Callable[[jax.Array, Network], RuleState]
    gradients: Callable[..., RuleOutput]
    name: str
    boundaries: Callable[[Network], tuple[int, ...]] | None = None


# --------------------------------------------------------------------------------------
# The shared machinery: a forward trace with one VJP per stage, and the downward sweep.

# signal(boundary, h, g, y_vec, e, g_true) -> (delta, aux); aux is collected per boundary.
# g is the gradient arriving at the boundary through the rule's own signals above it,
# g_true the exact ∂ℓ/∂h_b (None unless the sweep was asked to carry it).
SignalFn = Callable[..., tuple[jax.Array, Any]]


def _sweep(
    net: Network,
    params: Sequence[Params],
    x: jax.Array,
    y: jax.Array,
    loss: loss_lib.Loss,
    signal: SignalFn,
    stage_fns: Sequence[Callable] | None = None,
    exact: bool = False,
) -> tuple[jax.Array, jax.Array, tuple, tuple, dict]:
    """Forward with per-stage VJPs, then the downward sweep driven by ``signal``.

    With ``exact=True`` the exact gradient is carried down beside the rule's own (one
    more VJP per stage on the same forward trace) and handed to ``signal`` as ``g_true``.
    """
    check_input(net, x)
    if len(params) != net.depth:
        raise ValueError(f"`params`: expected one entry per stage ({net.depth}), got {len(params)}")
    fns = stage_fns if stage_fns is not None else [s.apply for s in net.stages]
    hs, vjps = [x], []
    for fn, theta in zip(fns, params):
        # h_{i-1} enters as a primal of this stage's own VJP: no gradient crosses a stage
        # boundary except through the signal the rule chooses.
        h, vjp = jax.vjp(fn, theta, jax.lax.stop_gradient(hs[-1]))
        hs.append(h)
        vjps.append(vjp)
    p = hs[-1]
    value = loss.fn(p, y)
    y_vec = loss_lib.as_target(y, p.shape[-1], p.dtype)
    e = jax.lax.stop_gradient(loss.output_grad(p, y))  # per-example ∂ℓ/∂p
    batch = x.shape[0]
    n = net.depth
    grads: list = [None] * n
    signals: list = [None] * n
    aux: dict = {}
    g = g_true = e
    for b in range(n, 0, -1):  # boundary b = output of stage b
        delta, aux[b] = signal(b, hs[b], jax.lax.stop_gradient(g), y_vec, e, g_true)
        signals[b - 1] = delta
        g_theta, g = vjps[b - 1](delta.astype(hs[b].dtype))
        if exact and b > 1:
            g_true = vjps[b - 1](g_true)[1]
        # Signals are per example, so the VJP gives the gradient of the *summed* loss.
        grads[b - 1] = jax.tree.map(lambda t: t / batch, g_theta)
    return value, p, tuple(grads), tuple(signals), aux


def exact_signals(
    net: Network, params: Sequence[Params], x: jax.Array, y: jax.Array, loss: loss_lib.Loss
) -> tuple[jax.Array, ...]:
    """The true per-example gradients ∂ℓ_b/∂h_i for boundaries i = 1..N (backprop).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from sgjax import nets, losses
        >>> net = nets.mlp([3, 4, 2])
        >>> params = net.init(jax.random.key(0))
        >>> [g.shape for g in exact_signals(net, params, jnp.ones((5, 3)), jnp.zeros(5, int),
        ...                                 losses.mse)]
        [(5, 4), (5, 2)]
    """
    _, _, _, signals, _ = _sweep(net, params, x, y, loss, _pass_through)
    return signals


def _pass_through(b, h, g, y_vec, e, g_true):
    del b, h, y_vec, e, g_true
    return g, None


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
        value, p, grads, signals, _ = _sweep(net, params, x, y, loss, _pass_through)
        return RuleOutput(value, p, grads, (), signals, jnp.zeros((0,), p.dtype))

    return UpdateRule(init, gradients, "backprop")


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


def _resolve_at(at: int | str | Sequence[int] | None, depth: int) -> tuple[int, ...]:
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

    Each module's loss is ``mean_b ‖t_b − SG(h_b, y_b)‖²``; its gradients come back in
    ``RuleOutput.rule_grads`` for the training step's SG optimiser.

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
    alpha = float(prop)

    def init(key: jax.Array, net: Network) -> RuleState:
        boundaries = _resolve_at(at, net.depth)
        keys = jax.random.split(key, len(boundaries))
        dtype = jnp.result_type(*jax.tree.leaves(jax.eval_shape(net.stages[0].init, key)))
        modules = tuple(
            estimator.init(k, net.stages[b - 1].out_shape, net.out_dim, dtype)
            for k, b in zip(keys, boundaries)
        )
        return RuleState(params=modules)

    def gradients(state, net, params, x, y, loss) -> RuleOutput:
        loss = loss_lib.get(loss)
        boundaries = _resolve_at(at, net.depth)
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
            t = jax.lax.stop_gradient(g_true if targets == "true" else g)
            # Only for modules that read h: there a non-finite h_b makes the output
            # non-finite anyway, so the tie changes no value (see _after).
            y_b = _after(y_vec, h) if estimator.uses_h and estimator.uses_y else y_vec

            def module(th, hh):
                return estimator.apply(th, hh, y_b)

            s, module_vjp = jax.vjp(module, theta, h)
            r = s - t
            batch = h.shape[0]
            sg_loss = jnp.mean(jnp.sum(jnp.square(r).reshape(batch, -1), axis=-1))
            # d/dθ and d/dh of mean_b ‖s_b − t_b‖² in one VJP; the h part times the batch
            # size is the per-example ∂ℓ_SG,b/∂h_b that SG + prop adds.
            g_theta, g_h = module_vjp(2.0 * r / batch)
            delta = jax.lax.stop_gradient(s)
            if alpha:
                delta = delta + alpha * batch * g_h
            return delta, (g_theta, sg_loss)

        value, p, grads, signals, aux = _sweep(
            net, params, x, y, loss, signal, exact=targets == "true"
        )
        rule_grads = tuple(aux[b][0] for b in boundaries)
        sg_loss = jnp.stack([aux[b][1] for b in boundaries])
        return RuleOutput(value, p, grads, rule_grads, signals, sg_loss)

    name = "sg-prop" if alpha else "sg"
    return UpdateRule(init, gradients, name, lambda net: _resolve_at(at, net.depth))


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
        value, p, grads, signals, _ = _sweep(net, params, x, y, loss, _pass_through, fns)
        return RuleOutput(value, p, grads, (), signals, jnp.zeros((0,), p.dtype))

    return UpdateRule(init, gradients, "fa")


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

        value, p, grads, signals, _ = _sweep(net, params, x, y, loss, signal)
        return RuleOutput(value, p, grads, (), signals, jnp.zeros((0,), p.dtype))

    return UpdateRule(init, gradients, name)


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

RULES: dict[str, Callable[..., UpdateRule]] = {
    "backprop": backprop,
    "sg": synthetic_gradients,
    "sg-prop": lambda **kw: synthetic_gradients(**{"prop": 1.0, **kw}),
    "fa": feedback_alignment,
    "dfa": direct_feedback_alignment,
    "kickback": kickback,
}


def get(name: str, **kwargs: Any) -> UpdateRule:
    """Build a rule from its command-line name (``backprop``, ``sg``, ``sg-prop``, ``fa``,
    ``dfa``, ``kickback``) and keyword arguments.

    Example:
        >>> get("dfa").name
        'dfa'
    """
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; expected one of {sorted(RULES)}")
    return RULES[name](**kwargs)
