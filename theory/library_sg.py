"""The SG modules' own training path, checked against an independent reference.

Here sgjax library code is the subject, not the paper: for every SG rule option
(bootstrapped and true targets, SG + prop, placements ``at``), every estimator of
:data:`sgjax.estimators.ESTIMATORS` and the interface path
(:func:`sgjax.interface.sg_interface`), the library's

* SG parameter gradients ``RuleOutput.rule_grads`` (∂L_SG/∂θ of every module),
* signals δ̂_i and stage parameter gradients (what the network below follows), and
* reported SG losses ``RuleOutput.sg_loss``

are compared with a reference written here from the definitions alone, on random
networks and random (non-zero) SG parameters, in float64:

* forward: hand-written stages (``tanh(hW + b)``; a convolution by explicit padding and
  a sum over kernel offsets for the conv net);
* the per-example loss ℓ_b (½‖p_b − y_b‖² or −Σ_k y_bk log softmax(p_b)_k), batch mean L;
* **true targets** ``t_i = B · ∂L/∂h_i``: ``jax.grad`` of the hand-written upper network's
  loss with respect to ``h_i`` (per example: B times the batch-mean gradient);
* **bootstrapped targets** ``t_i``: the signal δ̂_{i+1} above (a hand-written
  ``SG_{i+1}(h_{i+1}, y)``, or the gradient arriving where no module sits; ∂ℓ/∂p at the
  top) pushed through stage i+1's VJP;
* the SG modules written out per estimator (``hA + yB + C``, ``σ(hA)·d + yB + C``, an MLP
  on ``[h, y]``, ``conv(h, K) + conv(tile(y), K_y) + c`` ...);
* **the convention** (the library's, :func:`sgjax.estimators.regress`):
  ``L_SG = (1/B) Σ_b ‖t_b − SG(h_b, y_b)‖²`` — squared norm, *no* ½, batch mean, ``t``
  held constant. ∂L_SG/∂θ is ``jax.grad`` of that; SG + prop's signal is
  ``SG(h_b) + α ∂/∂h_b Σ_b ‖t_b − SG(h_b)‖²`` (per example); stage i's parameter
  gradient is ``(1/B) · VJP_θ(f_i)(δ̂_i)`` (the batch-mean loss).

The interface rows differentiate a hand-written model with ``sg_interface`` at its
boundaries by one ``jax.grad`` and compare with the same reference (bootstrapped
targets: interfaces bootstrap from each other). Its convention for a loss reduced by
``k`` (``"mean"``: k = B, ``"sum"``: k = 1): the per-example target is unchanged and the
module's loss is ``Σ_b ‖t_b − SG‖² / k``, so with ``"sum"`` both the stage and the module
gradients are B times the mean's.

Every claim row has a negative control on the *same* instances: the library compared
with a reference broken on purpose (true ↔ bootstrapped targets, prop dropped, the
module one boundary off, the ½‖·‖² convention, the wrong reduction). A control that
passed would mean the row cannot tell that difference apart.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgjax import estimators as est_lib
from sgjax import interface, nets, rules
from theory._common import rng, x64
from theory.record import Claim, at_most, control, library

#: Relative tolerance (float64; the measured errors are ~1e-15).
TOL = 1e-10
#: Batch size of every instance.
BATCH = 8
#: MLP widths (3 stages, hidden boundaries 1 and 2, both of width 6 so that a module fits
#: at either; an odd depth, so that "middle" = ⌈N/2⌉ differs from ⌊N/2⌋) and the conv
#: net's activation shapes.
MLP_SIZES = (5, 6, 6, 3)
CONV_IN, CONV_H, CONV_OUT = (4, 4, 2), (4, 4, 3), 3
#: The ``mlp`` estimator's hidden widths here (the registry's default is (1024, 1024);
#: the code path is the same).
MLP_HIDDEN = (16,)
PROP = 0.3


@dataclasses.dataclass(frozen=True)
class Config:
    """One row: what the library runs, and how its control breaks the reference.

    ``control``: ``"targets"`` (the other target kind), ``"prop0"`` (no prop term),
    ``"shift"`` (each module one boundary off), ``"half"`` (the ½‖t − s‖² convention),
    ``"reduction"`` (the other loss reduction; interface only).
    """

    tag: str
    estimator: str = "conditioned"
    targets: str = "bootstrap"
    prop: float = 0.0
    at: Any = "all"
    loss: str = "xent"
    net: str = "mlp"
    control: str = "targets"
    path: str = "rule"
    reduction: str = "mean"


def _configs() -> tuple[Config, ...]:
    out = []
    for name in est_lib.ESTIMATORS:
        net = "conv" if name.startswith("conv") else "mlp"
        loss = "mse" if name == "linear" else "xent"
        for targets in ("bootstrap", "true"):
            out.append(Config(f"{name}/{targets}", name, targets, loss=loss, net=net))
    for targets in ("bootstrap", "true"):
        out.append(
            Config(f"conditioned/{targets}/prop={PROP:g}", targets=targets, prop=PROP,
                   control="prop0")
        )  # fmt: skip
    out += [
        Config("conditioned/bootstrap/at=middle", at="middle", control="shift"),
        Config("conditioned/true/at=1", targets="true", at=(1,), control="shift"),
        Config("conditioned/at=output", at="output", loss="mse", control="half"),
        Config("interface/conditioned", path="interface"),
        Config("interface/conditioned/prop=0.3", prop=PROP, path="interface", control="prop0"),
        Config("interface/mlp/sum", "mlp", path="interface", reduction="sum",
               control="reduction"),
    ]  # fmt: skip
    return tuple(out)


#: Every row of the family.
CONFIGS: tuple[Config, ...] = _configs()

# ----------------------------------------------------------------------- the networks


def _conv_ref(h: jax.Array, K: jax.Array) -> jax.Array:
    """SAME cross-correlation, stride 1, NHWC × HWIO, by explicit padding."""
    k = K.shape[0]
    p = k // 2
    H, W = h.shape[1], h.shape[2]
    hp = jnp.pad(h, ((0, 0), (p, p), (p, p), (0, 0)))
    terms = [
        jnp.einsum("bhwc,co->bhwo", hp[:, i : i + H, j : j + W, :], K[i, j])
        for i in range(k)
        for j in range(k)
    ]
    out = terms[0]
    for term in terms[1:]:
        out = out + term
    return out


def _stage_fns(net: str) -> list[Callable[[Any, jax.Array], jax.Array]]:
    """The hand-written stages ``f_i(θ_i, h)`` (the reference's forward)."""
    if net == "mlp":
        n = len(MLP_SIZES) - 1
        return [
            (lambda th, h: jnp.tanh(h @ th["W"] + th["b"])) if i < n - 1
            else (lambda th, h: h @ th["W"] + th["b"])
            for i in range(n)
        ]  # fmt: skip
    return [
        lambda th, h: jnp.tanh(_conv_ref(h, th["K"]) + th["b"]),
        lambda th, h: jnp.tanh(_conv_ref(h, th["K"]) + th["b"]),
        lambda th, h: h.reshape(h.shape[0], -1) @ th["W"] + th["b"],
    ]


def _param_shapes(net: str) -> list[dict[str, tuple[int, ...]]]:
    if net == "mlp":
        return [{"W": (a, b), "b": (b,)} for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:])]
    c_in, c = CONV_IN[-1], CONV_H[-1]
    return [
        {"K": (3, 3, c_in, c), "b": (c,)},
        {"K": (3, 3, c, c), "b": (c,)},
        {"W": (int(np.prod(CONV_H)), CONV_OUT), "b": (CONV_OUT,)},
    ]


@functools.cache
def library_net(net: str) -> nets.Network:
    """The network the library runs: ``sgjax.nets.mlp`` (tanh) or conv stages of ours.

    Example:
        >>> library_net("mlp").depth, library_net("conv").out_dim
        (3, 3)
    """
    if net == "mlp":
        return nets.mlp(list(MLP_SIZES), "tanh", dtype=jnp.float64)
    fns, shapes = _stage_fns(net), _param_shapes(net)
    ins, outs = (CONV_IN, CONV_H, CONV_H), (CONV_H, CONV_H, (CONV_OUT,))

    def stage(fn: Callable, shp: dict, i: tuple, o: tuple) -> nets.Stage:
        def init(key: jax.Array) -> dict:
            del key
            return {k: jnp.zeros(s, jnp.float64) for k, s in shp.items()}

        return nets.Stage(init, fn, i, o, None, "conv-test")

    return nets.network([stage(*a) for a in zip(fns, shapes, ins, outs)])


# ------------------------------------------------------------------ the SG modules


def _sg_ref(name: str, th: Any, h: jax.Array, y: jax.Array) -> jax.Array:
    """The estimator ``name`` written out from its definition (per example)."""
    B = h.shape[0]
    hf = h.reshape(B, -1)
    if name == "linear":
        out = hf @ th["A"] + th["C"]
    elif name == "conditioned":
        out = hf @ th["A"] + y @ th["B"] + th["C"]
    elif name == "label_only":
        out = y @ th["B"] + th["C"]
    elif name == "sigmoid_linear":
        out = jax.nn.sigmoid(hf @ th["A"]) * th["d"] + y @ th["B"] + th["C"]
    elif name == "mlp":
        z = jnp.concatenate([hf, y], axis=1)
        for layer in th["hidden"]:
            z = jax.nn.relu(z @ layer["W"] + layer["b"])
        out = z @ th["out"]["W"] + th["out"]["b"]
    elif name in ("conv", "conv_unconditioned"):
        o = th["out"]
        out = _conv_ref(h, o["K"]) + o["c"]
        if name == "conv":  # the label as extra input channels, constant over space
            tiled = jnp.broadcast_to(y[:, None, None, :], (*h.shape[:3], y.shape[1]))
            out = out + _conv_ref(tiled, o["K_y"])
    else:
        raise ValueError(f"no reference written for estimator {name!r}")
    return out.reshape(h.shape)


def _shifted(bounds: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(b - 1 if b > 1 else b + 1 for b in bounds)


def _estimator(name: str) -> est_lib.Estimator:
    return est_lib.mlp(MLP_HIDDEN) if name == "mlp" else est_lib.get(name)


# ------------------------------------------------------------------ the reference


def _ell_mean(p: jax.Array, yv: jax.Array, loss: str) -> jax.Array:
    if loss == "mse":
        return jnp.mean(0.5 * jnp.sum((p - yv) ** 2, axis=1))
    return jnp.mean(-jnp.sum(yv * jax.nn.log_softmax(p, axis=1), axis=1))


def _boundaries(at: Any, depth: int) -> tuple[int, ...]:
    """Written out, not :func:`sgjax.rules.resolve_at`: the reference's own placement."""
    if at == "all":
        return tuple(range(1, depth))
    if at == "middle":
        return ((depth + 1) // 2,)  # the paper's single SG: boundary ⌈N/2⌉
    if at == "output":
        return (depth,)
    return tuple(at)


def reference(
    cfg: Config,
    params: list,
    sgs: tuple,
    x: jax.Array,
    yv: jax.Array,
    *,
    targets: str,
    prop: float,
    boundaries: tuple[int, ...],
    half: bool = False,
) -> dict[str, Any]:
    """Signals, stage gradients, ∂L_SG/∂θ and L_SG of every module, from the definitions."""
    fns = _stage_fns(cfg.net)
    N, B = len(fns), x.shape[0]
    hs = [x]
    for f, th in zip(fns, params):
        hs.append(f(th, hs[-1]))

    def upper_loss(b: int, h: jax.Array) -> jax.Array:  # L as a function of h_b
        for f, th in zip(fns[b:], params[b:]):
            h = f(th, h)
        return _ell_mean(h, yv, cfg.loss)

    deltas: list = [None] * N
    rule_grads, sg_loss = [], []
    slot = {b: k for k, b in enumerate(boundaries)}
    g = B * jax.grad(lambda p: _ell_mean(p, yv, cfg.loss))(hs[N])  # per-example ∂ℓ/∂p
    for b in range(N, 0, -1):
        if b < N:  # the signal above, pushed through stage b+1's VJP
            g = jax.vjp(lambda h, b=b: fns[b](params[b], h), hs[b])[1](deltas[b])[0]
        if b not in slot:
            deltas[b - 1] = g
            continue
        t = B * jax.grad(functools.partial(upper_loss, b))(hs[b]) if targets == "true" else g
        t = jax.lax.stop_gradient(t)
        th = sgs[slot[b]]

        def l_sg(th: Any, h: jax.Array, t: jax.Array = t) -> jax.Array:
            sq = jnp.sum(((t - _sg_ref(cfg.estimator, th, h, yv)) ** 2).reshape(B, -1), axis=1)
            return jnp.mean(sq) * (0.5 if half else 1.0)

        rule_grads.append((slot[b], jax.grad(l_sg)(th, hs[b])))
        sg_loss.append((slot[b], l_sg(th, hs[b])))
        d = _sg_ref(cfg.estimator, th, hs[b], yv)
        if prop:  # per example: ∂/∂h_b Σ_b ‖t_b − SG(h_b)‖²
            summed = jax.grad(
                lambda h, t=t, th=th: jnp.sum((t - _sg_ref(cfg.estimator, th, h, yv)) ** 2)
            )(hs[b])
            d = d + prop * summed  # fmt: skip
        deltas[b - 1] = d
    grads = [
        jax.tree.map(lambda a: a / B, jax.vjp(lambda th, i=i: fns[i](th, hs[i]), params[i])[1](
            deltas[i])[0])
        for i in range(N)
    ]  # fmt: skip
    rule_grads.sort(key=lambda r: r[0])
    sg_loss.sort(key=lambda r: r[0])
    return {
        "signals": deltas,
        "grads": grads,
        "rule_grads": [r for _, r in rule_grads],
        "sg_loss": jnp.stack([v for _, v in sg_loss]),
    }


# ------------------------------------------------------------------ the library side


def _library(cfg: Config, params: list, sgs: tuple, x: jax.Array, y: jax.Array) -> dict:
    net = library_net(cfg.net)
    if cfg.path == "rule":
        rule = rules.synthetic_gradients(
            _estimator(cfg.estimator), at=cfg.at, targets=cfg.targets, prop=cfg.prop
        )
        out = rule.gradients(rules.RuleState(params=sgs), net, params, x, y, cfg.loss)
        return {"signals": list(out.signals), "grads": list(out.grads),
                "rule_grads": list(out.rule_grads), "sg_loss": out.sg_loss}  # fmt: skip
    # The interface path: a hand-written model with sg_interface at its boundaries.
    fns = _stage_fns(cfg.net)
    yv = jax.nn.one_hot(y, net.out_dim, dtype=x.dtype)
    boundaries = _boundaries(cfg.at, len(fns))
    est = _estimator(cfg.estimator)

    def model_loss(params: list, sgs: tuple) -> jax.Array:
        h = x
        for i, (f, th) in enumerate(zip(fns, params), start=1):
            h = f(th, h)
            if i in boundaries:
                h = interface.sg_interface(
                    h, sgs[boundaries.index(i)], yv if est.uses_y else None, estimator=est,
                    prop=cfg.prop, loss_reduction=cfg.reduction,
                )  # fmt: skip
        ell = _ell_mean(h, yv, cfg.loss)
        return ell * x.shape[0] if cfg.reduction == "sum" else ell

    g_params, g_sgs = jax.grad(model_loss, argnums=(0, 1))(params, sgs)
    return {"grads": list(g_params), "rule_grads": list(g_sgs)}


def _rel(a: Any, b: Any) -> jax.Array:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(jnp.sum((u - v) ** 2) for u, v in zip(la, lb, strict=True))
    den = sum(jnp.sum(v**2) for v in lb)
    return jnp.sqrt(num) / jnp.maximum(jnp.sqrt(den), 1e-300)


def _errors(lib: dict, ref: dict, scale: float = 1.0) -> jax.Array:
    """[∂L_SG/∂θ, stage gradients, signals, L_SG]: worst relative error over modules/stages.

    ``scale`` multiplies the reference's gradients (B for the interface's summed loss).
    """
    e_theta = jnp.max(jnp.stack([
        _rel(a, jax.tree.map(lambda v: v * scale, b))
        for a, b in zip(lib["rule_grads"], ref["rule_grads"], strict=True)
    ]))  # fmt: skip
    e_grads = jnp.max(jnp.stack([
        _rel(a, jax.tree.map(lambda v: v * scale, b))
        for a, b in zip(lib["grads"], ref["grads"], strict=True)
    ]))  # fmt: skip
    if "signals" in lib:
        e_sig = jnp.max(jnp.stack([_rel(a, b) for a, b in zip(lib["signals"], ref["signals"])]))
        e_loss = _rel(lib["sg_loss"], ref["sg_loss"])
    else:  # the interface returns neither (its signals are inside the model's gradient)
        e_sig = e_loss = jnp.zeros(())
    return jnp.stack([e_theta, e_grads, e_sig, e_loss])


def _one(cfg: Config, params: list, sgs: tuple, x: jax.Array, y: jax.Array) -> jax.Array:
    depth = len(_stage_fns(cfg.net))
    yv = jax.nn.one_hot(y, library_net(cfg.net).out_dim, dtype=x.dtype)
    bounds = _boundaries(cfg.at, depth)
    lib = _library(cfg, params, sgs, x, y)
    scale = float(x.shape[0]) if cfg.reduction == "sum" else 1.0
    kw = dict(targets=cfg.targets, prop=cfg.prop, boundaries=bounds)
    ref = reference(cfg, params, sgs, x, yv, **kw)  # type: ignore[arg-type]
    broken_kw: dict[str, Any] = dict(kw)
    broken_scale = scale
    if cfg.control == "targets":
        broken_kw["targets"] = "true" if cfg.targets == "bootstrap" else "bootstrap"
    elif cfg.control == "prop0":
        broken_kw["prop"] = 0.0
    elif cfg.control == "shift":
        broken_kw["boundaries"] = _shifted(bounds)
    elif cfg.control == "half":
        broken_kw["half"] = True
    elif cfg.control == "reduction":
        broken_scale = 1.0 if cfg.reduction == "sum" else float(x.shape[0])
    else:
        raise ValueError(f"unknown control {cfg.control!r}")
    broken = reference(cfg, params, sgs, x, yv, **broken_kw)
    return jnp.stack([_errors(lib, ref, scale), _errors(lib, broken, broken_scale)])


@functools.cache
def _runner(cfg: Config) -> Callable:
    # Not jitted: each configuration is a different program, and compiling ~20 of them
    # cost ~60 s, while op-by-op execution reuses the compiled primitives across rows.
    return jax.vmap(functools.partial(_one, cfg))


_CONTROL_WHAT = {
    "targets": "reference with the other target kind ({other} instead of {targets})",
    "prop0": "reference without the prop term (α = 0 instead of {prop:g})",
    "shift": "reference with each module one boundary off ({shifted} instead of {at})",
    "half": "reference with the ½‖t − s‖² convention (the library's L_SG has no ½)",
    "reduction": "reference with the other loss reduction (mean instead of sum)",
}


def _draw(
    g: np.random.Generator, cfg: Config, instances: int
) -> tuple[list, tuple, np.ndarray, np.ndarray]:
    shapes = _param_shapes(cfg.net)
    # Weights N(0, 1/fan_in) (fan_in = the product of all but the output axis), biases
    # N(0, 0.3²).
    params = [
        {k: g.normal(size=(instances, *s)) * (1 / np.sqrt(np.prod(s[:-1])) if k in ("W", "K")
                                              else 0.3)
         for k, s in shp.items()}
        for shp in shapes
    ]  # fmt: skip
    net = library_net(cfg.net)
    est = _estimator(cfg.estimator)
    bounds = _boundaries(cfg.at, net.depth)
    key = jax.random.key(0)
    sg_shapes = [
        jax.eval_shape(lambda b=b: est.init(key, net.stages[b - 1].out_shape, net.out_dim,
                                            jnp.float64))
        for b in bounds
    ]  # fmt: skip
    # Non-zero modules (a fresh, zero-initialised SG would hide most bugs): every
    # parameter N(0, 0.3²).
    sgs = tuple(
        jax.tree.map(lambda s: 0.3 * g.normal(size=(instances, *s.shape)), sh) for sh in sg_shapes
    )
    x = g.normal(size=(instances, BATCH, *net.in_shape))
    y = g.integers(0, net.out_dim, size=(instances, BATCH))
    return params, sgs, x, y


@x64
def library_sg_gradients(
    key: jax.Array, instances: int, *, configs: tuple[Config, ...] = CONFIGS
) -> list[Claim]:
    """One claim and one control per :class:`Config` (see the module docstring).

    Example:
        >>> recs = library_sg_gradients(jax.random.key(0), 2, configs=CONFIGS[:1])
        >>> [(r.kind, r.ok, r.runs_library) for r in recs]
        [('claim', True, True), ('control', True, True)]
    """
    g = rng(key)
    out: list[Claim] = []
    for cfg in configs:
        params, sgs, x, y = _draw(g, cfg, instances)
        r = np.asarray(_runner(cfg)(params, sgs, x, y))  # (instances, 2, 4)
        worst = r.max(axis=0)
        subject = (
            f"sgjax.interface.sg_interface (loss_reduction={cfg.reduction!r})"
            if cfg.path == "interface"
            else f"sgjax.rules.synthetic_gradients({cfg.estimator!r}, at={cfg.at!r}, "
            f"targets={cfg.targets!r}, prop={cfg.prop:g})"
        )
        net = library_net(cfg.net)
        setup = (
            f"{subject}, {cfg.loss} loss, {'conv' if cfg.net == 'conv' else 'tanh MLP'} net "
            f"of {net.depth} stages, modules at {_boundaries(cfg.at, net.depth)}, batch "
            f"{BATCH}, random non-zero module parameters; reference: jax.grad of "
            "(1/B)Σ‖t − SG‖² with t computed by hand"
        )

        def parts(w: np.ndarray, interface_path: bool = cfg.path == "interface") -> str:
            s = f"rel. error ∂L_SG/∂θ {w[0]:.1e}, stage grads {w[1]:.1e}"
            return s + ("" if interface_path else f", signals {w[2]:.1e}, L_SG {w[3]:.1e}")

        name = f"library-sg/{cfg.tag}"
        claim = at_most(name, "library", worst[0].max(), TOL, instances,
                        f"max over instances; {parts(worst[0])}; {setup}")  # fmt: skip
        bounds = _boundaries(cfg.at, net.depth)
        what = _CONTROL_WHAT[cfg.control].format(
            other="true" if cfg.targets == "bootstrap" else "bootstrapped",
            targets=cfg.targets, prop=cfg.prop, at=bounds,
            shifted=_shifted(bounds),
        )  # fmt: skip
        # The control: the smallest error over instances against the broken reference.
        least = r[:, 1].max(axis=1).min()
        ctrl = control(
            at_most(f"{name}/vs-{cfg.control}", "library", least, TOL, instances,
                    f"min over instances; {parts(r[:, 1].min(axis=0))}"),
            what,
        )  # fmt: skip
        out += [library(claim), library(ctrl)]
    return out
