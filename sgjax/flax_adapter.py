"""Train a flax NNX model with any sgjax rule, without rewriting it.

sgjax's core is pure functions over pytrees; flax NNX modules are mutable objects. This
adapter is the bridge (and the only place sgjax touches NNX): it splits each block of a
model into a static ``graphdef`` and its parameters with :func:`flax.nnx.split`, and wraps
the pure function ``apply(params, h) = nnx.merge(graphdef, params)(h)`` as a
:class:`sgjax.nets.Stage`. Every rule, :func:`sgjax.train.make_step`, ``jax.jit`` and
``jax.vmap`` then work on the NNX model exactly as on :func:`sgjax.nets.mlp`.

Contract:

* :func:`network_from_nnx` ``(blocks, example_input) -> (Network, params)``. ``blocks`` is a
  sequence of NNX modules (or an :class:`flax.nnx.Sequential`); each module is one stage
  f_i, so boundary i — where an SG module may sit — is the output of block i. Plain
  callables in the sequence (``nnx.relu``, a flatten ``lambda``) have no parameters: they
  join the module before them (a leading one joins the first module), so
  ``[Linear, relu, Linear]`` gives the two stages ``relu∘Linear`` and ``Linear`` — except
  one that changes the per-example rank (a flatten) and has a module after it: it joins
  that module, so ``[Conv, relu, flatten, Linear]`` has its boundary at the conv's
  ``(H, W, C)`` output, where a conv SG fits (a flat 3136-vector there would need a
  3136×3136 dense SG; :func:`network_from_nnx` warns, naming the size, where a dense SG
  would hold more than :data:`DWARF` (10) times the network's parameters).
* :func:`estimator_per_boundary` ``(net, choices) -> Estimator``: one estimator for the
  rules that puts the conv SG at ``(H, W, C)`` boundaries, the dense cDNI SG elsewhere,
  or the estimator chosen per boundary.
  ``params[i]`` is a plain nested dict of arrays (:func:`flax.nnx.to_pure_dict` of the
  block's :class:`flax.nnx.Param` variables), so optax, checkpoints and ``jax.vmap``
  see ordinary pytrees. ``Stage.init(key)`` ignores ``key`` and returns the parameters the
  module holds: the user initialised the model with their own ``nnx.Rngs``.
* :func:`update_nnx` ``(blocks, params)`` writes trained parameters back into the modules
  (:func:`flax.nnx.update`), so the user continues with their NNX model.
* :func:`estimator_from_nnx` ``(make) -> Estimator``: an SG module written as an NNX module
  ``make(h_shape, y_dim, rngs)`` whose ``__call__(h, y)`` returns an array of ``h``'s shape.
  The zero-initialised output (paper §1.6) is **enforced by a check**: ``init`` raises
  ``ValueError`` if the fresh module's output is not exactly zero (zero the last layer's
  kernel and bias, e.g. ``kernel_init=nnx.initializers.zeros``).

Limits (checked where it is cheap):

* Non-parameter state (``BatchStat`` running averages, ``RngState`` of dropout) is frozen
  at its value when split; :func:`network_from_nnx` runs each block once and raises
  ``ValueError`` if that call changed such state (put BatchNorm/Dropout in eval mode with
  ``model.eval()``, or use :class:`flax.nnx.LayerNorm`).
* Feedback alignment needs a stage's ``feedback_apply``. It is provided for a bare
  :class:`flax.nnx.Linear` block (optionally followed by plain callables), and for a module
  that defines ``feedback(self, B, h)``; other blocks get a clear ``TypeError`` from
  :func:`sgjax.rules.feedback_alignment`. Backprop, SG, SG + prop, DFA and Kickback work
  for any block.
* Parameters shared between two blocks are split into two independent copies.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from sgjax import flax_adapter, rules, train
    >>> model = nnx.Sequential(nnx.Linear(4, 8, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(8, 3, rngs=nnx.Rngs(1)))
    >>> net, params = flax_adapter.network_from_nnx(model, jnp.ones((1, 4)))
    >>> net.depth, net.out_shape
    (2, (3,))
    >>> rule = rules.synthetic_gradients()
    >>> state = train.init(jax.random.key(0), net, rule, optax.sgd(0.1))
    >>> step = jax.jit(train.make_step(net, rule, "xent", optax.sgd(0.1)))
    >>> state, metrics = step(state, (jnp.ones((5, 4)), jnp.zeros(5, jnp.int32)))
    >>> flax_adapter.update_nnx(model, state.params)
    >>> bool(jnp.allclose(model(jnp.ones((1, 4))), net.apply(state.params, jnp.ones((1, 4)))))
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sgjax import estimators as est_lib
from sgjax import nets

Params = Any


def _blocks(blocks: Any) -> list[Any]:
    if isinstance(blocks, nnx.Sequential):
        return list(blocks.layers)
    if isinstance(blocks, nnx.Module):
        return [blocks]
    if isinstance(blocks, Sequence) and not isinstance(blocks, str | bytes):
        return list(blocks)
    raise TypeError(
        "network_from_nnx: `blocks` must be a sequence of flax NNX modules or an "
        f"nnx.Sequential, got {type(blocks).__name__}"
    )


def _rank_changes(fn: Callable, spec: Any) -> tuple[bool, Any]:
    """(does ``fn`` change the per-example rank, its output spec) — ``(False, None)`` if
    ``spec`` is unknown or ``fn`` cannot be traced on it."""
    if spec is None:
        return False, None
    try:
        out = jax.eval_shape(fn, spec)
    except Exception:  # the real call reports the real error later
        return False, None
    if not hasattr(out, "shape"):
        return False, None
    return len(out.shape) != len(spec.shape), jax.ShapeDtypeStruct(out.shape, out.dtype)


def _group(
    items: list[Any], spec: Any = None
) -> list[tuple[list[Callable], nnx.Module, list[Callable]]]:
    """Attach parameter-free callables to a neighbouring module: (pre, module, post).

    A callable joins the module before it, except that a leading one joins the first
    module and — when the input ``spec`` is known — one that changes the per-example rank
    (a flatten, an unflatten) joins the module *after* it, so the boundary keeps the
    previous module's shape (a conv boundary stays (H, W, C))."""
    groups: list[tuple[list[Callable], nnx.Module, list[Callable]]] = []
    pending: list[Callable] = []
    for k, item in enumerate(items):
        if isinstance(item, nnx.Module):
            groups.append((pending, item, []))
            pending = []
            if spec is not None:
                try:
                    out = jax.eval_shape(lambda h, m=item: m(h), spec)
                    spec = jax.ShapeDtypeStruct(out.shape, out.dtype)
                except Exception:  # reported by network_from_nnx's own call
                    spec = None
        elif callable(item):
            changes, spec = _rank_changes(item, spec)
            later = any(isinstance(i, nnx.Module) for i in items[k + 1 :])
            if groups and (not (changes or pending) or not later):
                groups[-1][2].extend([*pending, item])
                pending = []
            else:
                pending.append(item)
        else:
            raise TypeError(
                f"network_from_nnx: block {k} must be an nnx.Module or a callable, "
                f"got {type(item).__name__}"
            )
    if not groups:
        raise ValueError("network_from_nnx: `blocks` holds no nnx.Module; nothing to train")
    return groups


def _split(module: nnx.Module) -> tuple[Any, Any, Any]:
    """(graphdef, Param state, the rest) of a module."""
    parts: Any = nnx.split(module, nnx.Param, ...)
    return parts[0], parts[1], parts[2]


def _same_tree(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and bool(jnp.array_equal(x, y)) for x, y in zip(la, lb)
    )


def _linear_feedback(
    pre: list[Callable], post: list[Callable]
) -> Callable[[Params, jax.Array, jax.Array], jax.Array]:
    """feedback_apply for an nnx.Linear block: value h W + b, h-derivative through B."""

    def feedback_apply(theta: Params, B: jax.Array, h: jax.Array) -> jax.Array:
        for fn in pre:
            h = fn(h)
        # The same surrogate as sgjax.nets.dense: the W-path carries the parameter
        # gradient, the B-path (zero in value) carries the error back to h.
        a = jax.lax.stop_gradient(h) @ theta["kernel"]
        hB = h @ B.T
        a = a + (hB - jax.lax.stop_gradient(hB))
        if "bias" in theta:
            a = a + theta["bias"]
        for fn in post:
            a = fn(a)
        return a

    return feedback_apply


def network_from_nnx(blocks: Any, example_input: Any) -> tuple[nets.Network, tuple[Params, ...]]:
    """A :class:`~sgjax.nets.Network` and its parameters from a sequence of NNX blocks.

    Args:
        blocks: a sequence of :class:`flax.nnx.Module` (and parameter-free callables, which
            join the module before them), or an :class:`flax.nnx.Sequential`.
        example_input: a batch of inputs (or anything with ``.shape``); only its per-example
            shape ``example_input.shape[1:]`` and dtype are used.

    Returns:
        ``(net, params)`` — ``params[i]`` is the pure dict of block i's ``nnx.Param``
        values; ``net.init(key)`` returns the same parameters (the key is unused).

    Raises:
        TypeError: a block is neither an NNX module nor a callable.
        ValueError: a block changes non-parameter state when called (see module docs).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> blocks = [nnx.Linear(3, 5, rngs=nnx.Rngs(0)), nnx.tanh,
        ...           nnx.Linear(5, 2, rngs=nnx.Rngs(1))]
        >>> net, params = network_from_nnx(blocks, jnp.zeros((1, 3)))
        >>> [s.out_shape for s in net.stages], sorted(params[0])
        ([(5,), (2,)], ['bias', 'kernel'])
    """
    shape = getattr(example_input, "shape", None)
    if shape is None or len(shape) < 1:
        raise ValueError(
            "network_from_nnx: `example_input` must be a batch of inputs of shape "
            f"(batch, ...), got {type(example_input).__name__} with shape {shape}"
        )
    h_spec = jax.ShapeDtypeStruct((1, *tuple(shape[1:])), getattr(example_input, "dtype", None))
    stages: list[nets.Stage] = []
    params: list[Params] = []
    for k, (pre, module, post) in enumerate(_group(_blocks(blocks), h_spec)):
        graphdef, state, rest = _split(module)
        theta = nnx.to_pure_dict(state)

        def apply(theta, h, graphdef=graphdef, state=state, rest=rest, pre=pre, post=post):
            # Fresh States on every call: merge would otherwise share (and a call could
            # mutate) the Variable objects captured here.
            template = jax.tree.map(lambda v: v, state)
            nnx.replace_by_pure_dict(template, theta)
            for fn in pre:
                h = fn(h)
            h = nnx.merge(graphdef, template, jax.tree.map(lambda v: v, rest))(h)
            for fn in post:
                h = fn(h)
            return h

        if jax.tree.leaves(rest):
            # Run the block once on a zero batch and compare the non-parameter state: a
            # change there (BatchNorm statistics, dropout RNG) would be silently lost.
            copy = nnx.merge(graphdef, *jax.tree.map(jnp.array, (state, rest)))
            h0 = jnp.zeros(h_spec.shape, h_spec.dtype)
            for fn in pre:
                h0 = fn(h0)
            copy(h0)
            if not _same_tree(_split(copy)[2], rest):
                raise ValueError(
                    f"network_from_nnx: block {k} ({type(module).__name__}) changes its "
                    "non-parameter state (e.g. BatchNorm running statistics or a dropout RNG) "
                    "when called; sgjax stages are pure, so that change would be lost. Call "
                    "`model.eval()` first, or use a stateless block (e.g. nnx.LayerNorm)."
                )
        out = jax.eval_shape(apply, theta, h_spec)
        feedback_apply: Callable[[Params, jax.Array, jax.Array], jax.Array] | None = None
        if hasattr(module, "feedback"):

            def module_feedback(theta, B, h, graphdef=graphdef, state=state, rest=rest):
                template = jax.tree.map(lambda v: v, state)
                nnx.replace_by_pure_dict(template, theta)
                return nnx.merge(graphdef, template, jax.tree.map(lambda v: v, rest)).feedback(B, h)

            feedback_apply = module_feedback
        elif isinstance(module, nnx.Linear):
            feedback_apply = _linear_feedback(pre, post)

        def init(key: jax.Array, theta: Params = theta) -> Params:
            del key  # the module was initialised by the user's own nnx.Rngs
            return jax.tree.map(jnp.asarray, theta)

        stages.append(
            nets.Stage(
                init=init,
                apply=apply,
                in_shape=tuple(h_spec.shape[1:]),
                out_shape=tuple(out.shape[1:]),
                feedback_apply=feedback_apply,
                name=f"nnx.{type(module).__name__}",
            )
        )
        params.append(theta)
        h_spec = jax.ShapeDtypeStruct((1, *out.shape[1:]), out.dtype)
    net = nets.network(stages)
    _warn_dwarfing_boundaries(net, params)
    return net, tuple(params)


#: A module "dwarfs" the network (and is warned about) above this many times its size.
DWARF = 10


def _count(tree: Any) -> int:
    return sum(math.prod(v.shape) for v in jax.tree.leaves(tree))


def _warn_dwarfing_boundaries(net: nets.Network, params: Sequence[Params]) -> None:
    """Warn where a dense SG (d×d, the default estimator) would dwarf the network."""
    n_net = _count(params)
    for b, stage in enumerate(net.stages[:-1], start=1):
        if len(stage.out_shape) != 1:
            continue  # a spatial boundary: estimator_per_boundary puts the conv SG there
        d = int(stage.out_shape[0])
        n_sg = d * d + d * (net.out_dim + 1)
        if n_sg > DWARF * n_net:
            warnings.warn(
                f"network_from_nnx: boundary {b} (after {stage.name}) is a flat vector of {d}: "
                f"a dense SG there (hA + yB + C, the default estimator) would hold {n_sg:,} "
                f"parameters, {n_sg / n_net:.0f}x the network's {n_net:,}. Keep the boundary's "
                "spatial shape (a flatten placed before the next module joins it) and use "
                "flax_adapter.estimator_per_boundary(net) (the conv SG at (H, W, C) "
                "boundaries), or put SG modules elsewhere (rules.synthetic_gradients(at=...))",
                stacklevel=3,
            )


def estimator_per_boundary(
    net: nets.Network,
    choices: dict[int, Any] | None = None,
    *,
    flat: Any = "conditioned",
    spatial: Any = "conv",
) -> est_lib.Estimator:
    """One estimator that puts a suitable SG module at each boundary of ``net``.

    Boundary b (the output of stage b, 1..depth) gets ``choices[b]`` if given, else
    ``spatial`` (the conv SG) where its per-example shape is ``(H, W, C)`` and ``flat``
    elsewhere. The rules create every module with one estimator, so this one dispatches
    on the activation's per-example shape; two boundaries of the same shape must get the
    same estimator (else ``ValueError`` naming them). ``init`` warns, naming the size,
    when one module would hold more than :data:`DWARF` times the network's parameters.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> from sgjax import rules
        >>> model = nnx.Sequential(nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0)), nnx.relu,
        ...                        lambda a: a.reshape(a.shape[0], -1),
        ...                        nnx.Linear(8 * 8 * 4, 10, rngs=nnx.Rngs(1)))
        >>> net, params = network_from_nnx(model, jnp.ones((1, 8, 8, 1)))
        >>> [s.out_shape for s in net.stages]      # the flatten joined the Linear
        [(8, 8, 4), (10,)]
        >>> rule = rules.synthetic_gradients(estimator_per_boundary(net), at=[1])
        >>> sorted(rule.init(jax.random.key(0), net).params[0]["out"])   # the conv SG
        ['K', 'K_y', 'c']
    """
    where = "estimator_per_boundary"
    choices = dict(choices or {})
    bad = [b for b in choices if not isinstance(b, int) or not 1 <= b <= net.depth]
    if bad:
        raise ValueError(f"{where}: boundaries must be in 1..{net.depth}, got {bad}")
    by_shape: dict[tuple[int, ...], tuple[int, est_lib.Estimator]] = {}
    for b, stage in enumerate(net.stages, start=1):
        shape = tuple(stage.out_shape)
        default = spatial if len(shape) == 3 else flat
        est = est_lib.get(choices.get(b, default))
        if shape in by_shape and by_shape[shape][1] != est:
            other = by_shape[shape][0]
            raise ValueError(
                f"{where}: boundaries {other} and {b} share the per-example shape {shape} but "
                f"were given different estimators ({by_shape[shape][1].name} and {est.name}); "
                "the rules build every module with one estimator, which can only tell them "
                "apart by shape — give them the same one"
            )
        by_shape.setdefault(shape, (b, est))
    n_net = _count(jax.eval_shape(net.init, jax.random.key(0)))

    def pick(h_shape: Sequence[int]) -> tuple[int, est_lib.Estimator]:
        shape = tuple(int(d) for d in h_shape)
        if shape not in by_shape:
            raise ValueError(
                f"{where}: no boundary of the network has the per-example shape {shape} "
                f"(boundaries: {sorted(by_shape)}); was this estimator made for this network?"
            )
        return by_shape[shape]

    def init(key: jax.Array, h_shape: Sequence[int], y_dim: int, dtype=jnp.float32) -> Params:
        b, est = pick(h_shape)
        theta = est.init(key, tuple(h_shape), y_dim, dtype)
        n_sg = _count(theta)
        if n_sg > DWARF * n_net:
            warnings.warn(
                f"{where}: the {est.name} SG at boundary {b} (shape {tuple(h_shape)}) holds "
                f"{n_sg:,} parameters, {n_sg / n_net:.0f}x the network's {n_net:,}",
                stacklevel=2,
            )
        return theta

    def apply(theta: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        return pick(h.shape[1:])[1].apply(theta, h, y)

    ests = [e for _, e in by_shape.values()]
    name = "per-boundary(" + ", ".join(f"{b}:{e.name}" for b, e in by_shape.values()) + ")"
    return est_lib.Estimator(
        init, apply, name, any(e.uses_h for e in ests), any(e.uses_y for e in ests)
    )


def update_nnx(blocks: Any, params: Sequence[Params]) -> None:
    """Write ``params`` (as returned by training) back into the NNX modules, in place.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> lin = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        >>> net, params = network_from_nnx([lin], jnp.zeros((1, 2)))
        >>> update_nnx([lin], (jax.tree.map(jnp.zeros_like, params[0]),))
        >>> float(jnp.abs(lin.kernel[...]).sum())
        0.0
    """
    modules = [m for _, m, _ in _group(_blocks(blocks))]
    if len(params) != len(modules):
        raise ValueError(
            f"update_nnx: `params` holds {len(params)} entries but `blocks` has "
            f"{len(modules)} modules"
        )
    for module, theta in zip(modules, params):
        state = nnx.state(module, nnx.Param)
        nnx.replace_by_pure_dict(state, theta)
        nnx.update(module, state)


def estimator_from_nnx(make: Callable[..., nnx.Module], *, name: str = "nnx") -> est_lib.Estimator:
    """An SG estimator written as a flax NNX module.

    Args:
        make: ``make(h_shape, y_dim, rngs) -> module`` where ``module(h, y)`` maps
            ``h`` of shape ``(batch, *h_shape)`` and one-hot ``y`` of shape
            ``(batch, y_dim)`` to an estimate of ∂ℓ/∂h of ``h``'s shape. Its output must be
            exactly zero when fresh (zero-initialised output layer; checked by ``init``).
        name: the estimator's name.

    Returns:
        An :class:`~sgjax.estimators.Estimator`; its parameters are a pure dict of the
        module's ``nnx.Param`` values. Non-parameter state of the module is not supported.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> class SG(nnx.Module):  # SG(h, y) = [h, y] W + b, zero-initialised
        ...     def __init__(self, h_shape, y_dim, rngs):
        ...         self.out = nnx.Linear(h_shape[0] + y_dim, h_shape[0], rngs=rngs,
        ...                               kernel_init=nnx.initializers.zeros)
        ...     def __call__(self, h, y):
        ...         return self.out(jnp.concatenate([h, y], axis=-1))
        >>> sg = estimator_from_nnx(SG)
        >>> theta = sg.init(jax.random.key(0), (4,), 3)
        >>> sg.apply(theta, jnp.ones((2, 4)), jnp.ones((2, 3))).shape
        (2, 4)
    """
    if not callable(make):
        raise TypeError(
            f"estimator_from_nnx: `make` must be a callable (h_shape, y_dim, rngs) -> module, "
            f"got {type(make).__name__}"
        )
    cache: dict[tuple, tuple[Any, Any]] = {}

    def structure(h_shape: tuple[int, ...], y_dim: int, dtype: Any) -> tuple[Any, Any]:
        # graphdef and an abstract Param State for this shape; the module is built
        # abstractly (nnx.eval_shape), so no arrays are allocated.
        k = (h_shape, y_dim, jnp.dtype(dtype).name)
        if k not in cache:
            abstract = nnx.eval_shape(lambda: make(h_shape, y_dim, nnx.Rngs(0)))
            graphdef, state = nnx.split(abstract, nnx.Param)
            cache[k] = (graphdef, state)
        return cache[k]

    def init(key: jax.Array, h_shape: Sequence[int], y_dim: int, dtype=jnp.float32) -> Params:
        h_shape = tuple(int(d) for d in h_shape)
        module = make(h_shape, int(y_dim), nnx.Rngs(key))
        _, state, rest = _split(module)
        if jax.tree.leaves(rest):
            raise ValueError(
                f"estimator_from_nnx: the module built by `make` has non-parameter state "
                f"({type(module).__name__}); SG estimators must hold only nnx.Param variables"
            )
        theta = jax.tree.map(lambda a: jnp.asarray(a, dtype), nnx.to_pure_dict(state))
        kh, ky = jax.random.split(key)
        h = jax.random.normal(kh, (3, *h_shape), dtype)
        y = jax.nn.one_hot(jax.random.randint(ky, (3,), 0, y_dim), y_dim, dtype=dtype)
        s = module(h, y)
        if tuple(s.shape) != tuple(h.shape):
            raise ValueError(
                f"estimator_from_nnx: the module must return an array of h's shape "
                f"{tuple(h.shape)}, got {tuple(s.shape)}"
            )
        if bool(jnp.any(s != 0)):
            raise ValueError(
                "estimator_from_nnx: a fresh SG module must output exactly zero (paper §1.6: "
                "zero-initialise the output layer's weights and bias, e.g. "
                "`kernel_init=nnx.initializers.zeros`); this one outputs values up to "
                f"{float(jnp.max(jnp.abs(s))):.3g}"
            )
        return theta

    def apply(theta: Params, h: jax.Array, y: jax.Array) -> jax.Array:
        graphdef, state = structure(tuple(h.shape[1:]), int(y.shape[-1]), h.dtype)
        template = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(template, theta)
        return nnx.merge(graphdef, template)(h, y)

    return est_lib.Estimator(init, apply, name)
