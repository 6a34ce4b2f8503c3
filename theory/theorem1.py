"""Theorem 1: linear regression with a linear SG between output and loss.

paper.md §2.7, items 4–6 of §6. Data ``X̄ = (Xᵀ | 1ᵀ)ᵀ ∈ R^{(d+1)×S}``, labels ``y``,
``p = W X̄``, ``L = ½ Σ (y − p)²``. The SG is
``(α + 1) p − (β + 1) y + γ 1``, started at ``ω = (α, β, γ) = (−1, −1, 0)`` (SG ≡ 0),
trained by a line-searched gradient step on its error ``E = ‖αp − βy + γ1‖²``:
``ν = ‖Aᵀξ‖² / ‖AAᵀξ‖²`` with ``A = [pᵀ | −yᵀ | 1ᵀ]`` and ``ξ = Aω``. The main rate is the
corrected bound ``μ = ½ min(b/‖B‖², h/(2‖B‖))`` with ``B = X̄ᵀX̄``, ``b`` its smallest
non-zero eigenvalue and ``h = (‖Aᵀξ‖²/‖AAᵀξ‖²)(‖Aᵀξ‖²/‖ξ‖²)`` (the printed second term
is garbled; see paper.md).

Checked: convergence to the least-squares solution and ``ω → 0`` to 1e-8 (item 4;
each run iterates until both hold or a cap is reached, and the iteration counts are
reported: the theorem gives no rate, and with the line-searched ``μ`` an instance whose
``p``, ``y`` and ``1`` are nearly collinear needs many more steps); the least-squares
residual ``e^⊥`` is invariant and ``ω = 0`` is invariant (item 5); the proof's one-step
inequality ``‖f_{k+1}‖ + ‖ξ_k − νA_kA_kᵀξ_k‖ ≤ ‖f_k‖ + ‖ξ_k‖`` holds (item 5); with fixed
small rates a label-conditioned linear SG converges while a label-free
``SG(p) = αp + γ`` does not (item 6).

Finding (kind ``"finding"``, does not change the exit code): the digest's reading of
item 5, "``‖f_k‖ + ‖ξ_k‖`` is non-increasing along the iterates", is **false**. The
proof writes ``ξ_{k+1} = ξ_k − νA_kA_kᵀξ_k``, but ``ξ_{k+1} = A_{k+1}ω_{k+1}`` and
``A_{k+1} ≠ A_k`` because ``p`` moves; on a few percent of random instances the sum
rises in the first steps (while ``α ≈ −1``). Convergence holds regardless. The record
reports the fraction of instances with a rise and the largest rise, and a test checks
the finding is still detected.

Negative controls: a main rate past the stability limit (``μ = 2.5/‖B‖``) breaks the
one-step inequality; the label-free SG fails the convergence check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from theory._common import rng, x64
from theory.record import Claim, at_least, at_most, control, finding, identity


def instances_np(
    key: jax.Array, instances: int, d: int, S: int, noise: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Batches of ``X̄`` (``(d+1) × S``, last row ones) and ``y = wX̄ + noise·N(0, 1)``.

    ``noise = 0`` is the realizable case (``y`` in the row space of ``X̄``).

    Example:
        >>> Xb, y = instances_np(jax.random.key(0), 2, 5, 50)
        >>> Xb.shape, y.shape, bool((Xb[:, -1] == 1).all())
        ((2, 6, 50), (2, 50), True)
    """
    g = rng(key)
    X = g.normal(size=(instances, d, S))
    Xb = np.concatenate([X, np.ones((instances, 1, S))], axis=1)
    w = g.normal(size=(instances, 1, d + 1))
    y = (w @ Xb)[:, 0] + noise * g.normal(size=(instances, S))
    return Xb, y


def _safe_div(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)


def _line_search_one(
    Xb: jax.Array,
    y: jax.Array,
    omega0: jax.Array,
    max_steps: jax.Array,
    tol: jax.Array,
    unstable: jax.Array,
    c_weight: jax.Array | float = 3.0,
) -> jax.Array:
    """Iterate until ‖W − W_OLS‖ ≤ tol and ‖ω‖ ≤ tol, or ``max_steps``; track the proof's
    quantities on the way. All arguments are traced: one program serves every use."""
    G = Xb @ Xb.T
    eig = jnp.linalg.eigvalsh(G)  # the non-zero eigenvalues of B = X̄ᵀX̄
    b_min, B_norm = eig[0], eig[-1]
    W_ols = jnp.linalg.solve(G, Xb @ y)
    P = Xb.T @ jnp.linalg.solve(G, Xb)  # projector onto the row space of X̄
    e_perp0 = y - P @ y
    ones = jnp.ones_like(y)

    def lyapunov(W: jax.Array, omega: jax.Array) -> jax.Array:
        A = jnp.stack([W @ Xb, -y, ones], axis=1)
        return jnp.linalg.norm(P @ (y - W @ Xb)) + jnp.linalg.norm(A @ omega)

    def weighted(W: jax.Array, omega: jax.Array) -> jax.Array:  # c‖f‖ + ‖ξ‖
        A = jnp.stack([W @ Xb, -y, ones], axis=1)
        return c_weight * jnp.linalg.norm(P @ (y - W @ Xb)) + jnp.linalg.norm(A @ omega)

    def err(W: jax.Array, omega: jax.Array) -> jax.Array:
        return jnp.maximum(jnp.linalg.norm(W - W_ols), jnp.linalg.norm(omega))

    def cond(c: tuple) -> jax.Array:
        W, omega, k = c[0], c[1], c[2]
        return (k < max_steps) & (err(W, omega) > tol)

    def body(c: tuple) -> tuple:
        W, omega, k, V, max_rise, max_perp, max_rise_frozen, max_abs_omega, Vc, max_rise_c = c
        p = W @ Xb
        A = jnp.stack([p, -y, ones], axis=1)
        xi = A @ omega
        Atxi = A.T @ xi
        AAtxi = A @ Atxi
        nu = _safe_div(Atxi @ Atxi, AAtxi @ AAtxi)  # the line search
        h = nu * _safe_div(Atxi @ Atxi, xi @ xi)
        bound = b_min / B_norm**2
        mu = jnp.where(xi @ xi > 0, 0.5 * jnp.minimum(bound, h / (2 * B_norm)), 0.5 * bound)
        mu = jnp.where(unstable, 2.5 / B_norm, mu)
        sg = p - y + xi  # (α+1)p − (β+1)y + γ1
        W_new = W - mu * sg @ Xb.T
        omega_new = omega - nu * (A.T @ xi)
        V_new = lyapunov(W_new, omega_new)
        Vc_new = weighted(W_new, omega_new)
        # The proof's one-step bound: ξ_(k+1) = ξ_k − ν A_k A_kᵀ ξ_k, i.e. A frozen at A_k.
        f_new = jnp.linalg.norm(P @ (y - W_new @ Xb))
        V_frozen = f_new + jnp.linalg.norm(A @ omega_new)
        V_here = jnp.linalg.norm(P @ (y - p)) + jnp.linalg.norm(xi)
        e_new = y - W_new @ Xb
        perp = jnp.linalg.norm(e_new - P @ e_new - e_perp0)
        return (
            W_new,
            omega_new,
            k + 1,
            V_new,
            jnp.maximum(max_rise, V_new - V),
            jnp.maximum(max_perp, perp),
            jnp.maximum(max_rise_frozen, V_frozen - V_here),
            jnp.maximum(max_abs_omega, jnp.max(jnp.abs(omega_new))),
            Vc_new,
            jnp.maximum(max_rise_c, Vc_new - Vc),
        )

    W0 = jnp.zeros(Xb.shape[0])
    ninf = jnp.array(-jnp.inf)
    init = (
        W0, omega0, jnp.array(0), lyapunov(W0, omega0), ninf, jnp.array(0.0), ninf, ninf,
        weighted(W0, omega0), ninf,
    )  # fmt: skip
    out = jax.lax.while_loop(cond, body, init)
    W, omega, k, _, max_rise, max_perp, max_rise_frozen, max_abs_omega, _, max_rise_c = out
    return jnp.array(
        [
            jnp.linalg.norm(W - W_ols),
            jnp.linalg.norm(omega),
            max_rise,
            max_perp,
            max_abs_omega,
            max_rise_frozen,
            k,
            max_rise_c,
        ]
    )


_line_search = jax.jit(jax.vmap(_line_search_one, (0, 0, 0, None, None, None, None)))
_OMEGA0 = (-1.0, -1.0, 0.0)  # SG ≡ 0 at the start, as Jaderberg et al. prescribe


def _runs(
    key: jax.Array,
    instances: int,
    sizes: tuple[int, int],
    steps: int,
    *,
    tol: float = 0.0,
    unstable: bool = False,
    omega0: tuple[float, float, float] | np.ndarray = _OMEGA0,
    noise: float = 0.3,
    c_weight: float = 3.0,
) -> np.ndarray:
    Xb, y = instances_np(key, instances, *sizes, noise=noise)
    om = np.broadcast_to(np.asarray(omega0, dtype=float), (instances, 3))
    out = _line_search(Xb, y, om, steps, tol, unstable, c_weight)
    return np.asarray(out)


@x64
def theorem1_line_search(
    key: jax.Array,
    instances: int,
    *,
    unstable: bool = False,
    sizes: tuple[int, int] = (5, 50),
    max_steps: int = 400_000,
    tol: float = 1e-8,
) -> list[Claim]:
    """Items 4–5: convergence to OLS within ``max_steps``, e^⊥ and ω = 0 invariant,
    and the proof's one-step Lyapunov inequality.

    Args:
        key: PRNG key for the instances.
        instances: random regression problems (``sizes = (d, S)``).
        unstable: negative control: main rate μ = 2.5/‖B‖, past the stability limit.
        max_steps: iteration cap; a run stops as soon as both errors are ≤ ``tol``.
        tol: the convergence target for ‖W − W_OLS‖ and ‖(α, β, γ)‖.

    Example:
        >>> recs = theorem1_line_search(jax.random.key(0), 2, sizes=(2, 10), tol=1e-6)
        >>> [(c.name, c.passed) for c in recs][:2]
        [('thm1/converges-to-OLS', True), ('thm1/e⊥-invariant', True)]
    """
    d, S = sizes
    if unstable:
        r = _runs(key, instances, sizes, 30, unstable=True)
        return [
            control(
                at_most(
                    "thm1/lyapunov-one-step",
                    "Thm. 1 (proof)",
                    np.max(r[:, 5]),
                    1e-12,
                    instances,
                    "max rise of the proof's one-step bound over 30 steps",
                ),
                "main rate μ = 2.5/‖B‖, past the stability limit",
            )
        ]
    r = _runs(key, instances, sizes, max_steps, tol=tol)
    worst = np.max(r, axis=0)
    iters = r[:, 6]
    # ω = 0 is invariant: started there, the SG is exact and ω stays exactly 0.
    r0 = _runs(jax.random.fold_in(key, 1), min(instances, 16), sizes, 200, omega0=(0.0, 0.0, 0.0))
    return [
        at_most(
            "thm1/converges-to-OLS",
            "Thm. 1",
            max(worst[0], worst[1]),
            tol,
            instances,
            f"max(‖W − W_OLS‖, ‖(α,β,γ)‖) = ({worst[0]:.1e}, {worst[1]:.1e}); iterations "
            f"to reach {tol:g}: median {np.median(iters):.0f}, max {np.max(iters):.0f} "
            f"(cap {max_steps}); d={d}, S={S}",
        ),
        identity(
            at_most(
                "thm1/e⊥-invariant",
                "Thm. 1 (proof)",
                worst[3],
                1e-12,
                instances,
                "max_k ‖e⊥_k − e⊥_0‖ (least-squares residual), whole runs; true by "
                "construction (every W-update lies in the row space of X̄)",
            )
        ),
        at_most(
            "thm1/lyapunov-one-step",
            "Thm. 1 (proof)",
            worst[5],
            1e-12,
            instances,
            "max over steps of ‖f_(k+1)‖+‖A_k ω_(k+1)‖ − (‖f_k‖+‖ξ_k‖): the proof's "
            "inequality, ξ_(k+1) taken as ξ_k − νA_kA_kᵀξ_k (A frozen for the step)",
        ),
        identity(
            at_most(
                "thm1/ω=0-invariant",
                "Thm. 1 (proof)",
                np.max(r0[:, 4]),
                0.0,
                r0.shape[0],
                "started at α=β=γ=0: max |ω| after 200 steps; true by construction "
                "(the ω-update is linear in ω)",
            )
        ),
    ]


@x64
def theorem1_realizable(
    key: jax.Array,
    instances: int,
    *,
    noise: float = 0.0,
    sizes: tuple[int, int] = (5, 50),
    max_steps: int = 100_000,
    tol: float = 1e-8,
) -> list[Claim]:
    """Theorem 1 on realizable (``noise = 0``) or near-realizable data: a finding.

    The theorem gives no rate. With ``y`` (almost) in the row space of ``X̄`` the SG's
    features ``p``, ``y`` and ``1`` become (almost) collinear as ``p → y``, the line
    search's ``h`` and so ``μ`` collapse, and convergence slows down. The row reports
    the fraction of instances that reach ``tol`` within ``max_steps`` (it "holds" when
    all do) and the error reached by the others.

    Example:
        >>> (f,) = theorem1_realizable(jax.random.key(0), 2, max_steps=2000)
        >>> f.kind
        'finding'
    """
    r = _runs(key, instances, sizes, max_steps, tol=tol, noise=noise)
    r10 = _runs(key, instances, sizes, max_steps // 10, tol=tol, noise=noise)
    err = np.maximum(r[:, 0], r[:, 1])
    err10 = np.maximum(r10[:, 0], r10[:, 1])
    done = err <= tol
    late = err[~done]
    return [
        finding(
            at_least(
                f"thm1/converges/noise={noise:g}",
                "Thm. 1",
                done.mean(),
                1.0,
                instances,
                f"fraction reaching max(‖W − W_OLS‖, ‖ω‖) ≤ {tol:g} within {max_steps} "
                f"line-searched steps: {int(done.sum())}/{instances}; the others ended at "
                + (
                    f"median {np.median(late):.1e}, max {np.max(late):.1e}"
                    if late.size
                    else "(none)"
                )
                + "; iterations of those that converged: median "
                + (f"{np.median(r[done, 6]):.0f}" if done.any() else "–")
                + f"; median error after {max_steps // 10} steps {np.median(err10):.1e}, "
                f"after {max_steps} {np.median(err):.1e} (noise {noise:g}; 0.3 converges)",
            ),
            "holds" if done.all() else "slow: the theorem gives no rate; not a failure of it",
        )
    ]


#: Starts ω₀ = (α₀, β₀, γ₀) for the Lyapunov findings: the paper's, and larger |α₀|.
LYAPUNOV_STARTS = ((-1.0, -1.0, 0.0), (-3.0, -1.0, 0.0), (2.0, -1.0, 0.0))


@x64
def lyapunov_trajectory(
    key: jax.Array,
    instances: int,
    *,
    sizes: tuple[int, int] = (5, 50),
    steps: int = 1000,
    starts: tuple[tuple[float, float, float], ...] = LYAPUNOV_STARTS[:1],
    c_weight: float = 3.0,
) -> list[Claim]:
    """The findings on the proof's Lyapunov function along the actual iterates.

    Runs ``steps`` line-searched iterations (a rise, when there is one, comes early)
    from each start and reports (1) the largest one-step rise of
    ``V_k = ‖f_k‖ + ‖A_kω_k‖`` and the fraction of instances with a rise above 1e-12
    (the proof claims none: it is *refuted*, the proof takes ``A`` frozen within a
    step); (2) the same for the weighted ``c‖f_k‖ + ‖ξ_k‖`` (``c = c_weight``), which
    is only *observed* to be non-increasing: no proof is claimed here.

    Example:
        >>> recs = lyapunov_trajectory(jax.random.key(0), 4, steps=50)
        >>> [f.kind for f in recs]
        ['finding', 'finding']
    """
    rs = [
        _runs(jax.random.fold_in(key, i), instances, sizes, steps, omega0=w0, c_weight=c_weight)
        for i, w0 in enumerate(starts)
    ]
    r = np.concatenate(rs)
    n = r.shape[0]
    per = "; ".join(
        f"ω₀={tuple(w0)}: {np.mean(x[:, 2] > 1e-12):.1%} / {np.mean(x[:, 7] > 1e-12):.1%}"
        for w0, x in zip(starts, rs)
    )
    rises, rises_c = r[:, 2] > 1e-12, r[:, 7] > 1e-12
    return [
        finding(
            at_most(
                "thm1/lyapunov-trajectory",
                "Thm. 1 (proof)",
                np.max(r[:, 2]),
                1e-12,
                n,
                f"max_k V_(k+1) − V_k, V = ‖f‖+‖ξ‖, ξ_k = A_kω_k on the actual iterates "
                f"({steps} steps); rises on {int(rises.sum())}/{n} instances "
                f"({rises.mean():.1%}); fraction with a rise of ‖f‖+‖ξ‖ / of "
                f"{c_weight:g}‖f‖+‖ξ‖ by start: {per}; the one-step bound with A frozen "
                "holds, and convergence holds regardless",
            ),
            "refuted: proof gap (ξ_(k+1) = A_(k+1)ω_(k+1), but the proof uses A_k)"
            if rises.any()
            else "not reproduced on these instances",
        ),
        finding(
            at_most(
                f"thm1/weighted-lyapunov(c={c_weight:g})",
                "Thm. 1 (proof, repair?)",
                np.max(r[:, 7]),
                1e-12,
                n,
                f"max_k rise of {c_weight:g}‖f_k‖ + ‖ξ_k‖ on the same runs; rises on "
                f"{int(rises_c.sum())}/{n} instances; observed only, not proved",
            ),
            "holds on these instances (observed, not proved)"
            if not rises_c.any()
            else "refuted: the weighted sum rises too",
        ),
    ]


def _fixed_rate_one(
    Xb: jax.Array, y: jax.Array, steps: int, label: jax.Array, mu_scale: float, nu_scale: float
) -> jax.Array:
    G = Xb @ Xb.T
    W_ols = jnp.linalg.solve(G, Xb @ y)
    mu = mu_scale / jnp.linalg.eigvalsh(G)[-1]  # fixed, scaled to the instance's data

    def loss(W: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum((y - W @ Xb) ** 2)

    y_in = label * y  # the label-free SG sees zeros instead of y (B then stays 0)

    def feats_of(W: jax.Array) -> jax.Array:
        return jnp.stack([W @ Xb, y_in, jnp.ones_like(y)], axis=1)

    def step(carry: tuple[jax.Array, jax.Array], _: None) -> tuple[tuple, None]:
        W, abc = carry
        p = W @ Xb
        feats = feats_of(W)
        sg = feats @ abc  # SG = pA + yB + C
        # ν scaled to the SG's features: 1/λ_max(FᵀF) (3 × 3), a stable regression step.
        nu = nu_scale / jnp.linalg.eigvalsh(feats.T @ feats)[-1]
        W_new = W - mu * sg @ Xb.T
        abc_new = abc - nu * feats.T @ (sg - (p - y))
        return (W_new, abc_new), None

    W0 = jnp.zeros(Xb.shape[0])
    (W, abc), _ = jax.lax.scan(step, (W0, jnp.zeros(3)), None, length=steps)
    L_opt = loss(W_ols)
    feats = feats_of(W)
    p = W @ Xb
    sg = feats @ abc
    return jnp.array(
        [
            loss(W) - L_opt,
            loss(W0) - L_opt,
            *abc,
            jnp.linalg.norm(sg @ Xb.T),  # the SG-driven W-update direction
            jnp.linalg.norm((p - y) @ Xb.T),  # the true ∂L/∂W
            jnp.linalg.norm(feats.T @ (sg - (p - y))),  # ∂E/∂(A, B, C)
            jnp.linalg.norm(y @ Xb.T),  # ∂L/∂W at W = 0
        ]
    )


_fixed_rate = jax.jit(jax.vmap(_fixed_rate_one, (0, 0, None, None, None, None)), static_argnums=2)

#: Fixed rates, scaled per instance: μ = MU_SCALE/λ_max(X̄X̄ᵀ), ν = NU_SCALE/λ_max(FᵀF).
#: (The digest's μ = 1e-4, ν = 1e-3 are not scaled to the data: ν·λ_max(FᵀF) passes
#: 2 on about 1 instance in 160 and the run diverges to NaN.)
MU_SCALE, NU_SCALE = 0.02, 0.5


@x64
def theorem1_fixed_rates(
    key: jax.Array,
    instances: int,
    *,
    label: bool = True,
    sizes: tuple[int, int] = (5, 50),
    steps: int = 40_000,
) -> list[Claim]:
    """Item 6: fixed rates (scaled per instance); with the label the loss gap ≤ 1e-3.

    ``label=False`` (negative control on the same instances): ``SG(p) = αp + γ``
    cannot represent ``p − y``. The mechanism is then checked directly: the run ends at
    a critical point of the SG system (the SG-driven update ``‖SG·X̄ᵀ‖`` and the SG's
    own gradient vanish) while the true ``‖∂L/∂W‖`` stays large.

    Example:
        >>> [c.ok for c in theorem1_fixed_rates(jax.random.key(0), 2, steps=20_000)]
        [True, True]
    """
    d, S = sizes
    Xb, y = instances_np(key, instances, d, S)
    r = np.asarray(_fixed_rate(Xb, y, steps, float(label), MU_SCALE, NU_SCALE))
    gap, gap0 = r[:, 0], r[:, 1]
    upd, true_g, sg_g, g0 = r[:, 5], r[:, 6], r[:, 7], r[:, 8]
    size = (
        f"d={d}, S={S}, {steps} steps, μ={MU_SCALE:g}/λ_max(X̄X̄ᵀ), "
        f"ν={NU_SCALE:g}/λ_max(FᵀF) per step"
    )
    conv = at_most(
        "thm1/fixed-rates-converge" + ("" if label else "/no-label"),
        "Thm. 1 (§2.7)",
        np.max(gap),
        1e-3,
        instances,
        f"max loss gap to OLS (L = ½Σ(y−p)²); median {np.median(gap):.1e}; "
        f"SG params → (A,B,C) ≈ {tuple(round(float(v), 3) for v in np.median(r[:, 2:5], 0))}; "
        + size,
    )
    # Stuck = a critical point of the SG system that is not one of L.
    stuck = (upd <= 1e-6 * true_g) & (sg_g <= 1e-6 * g0) & (true_g >= 0.1 * g0)
    mech = at_least(
        "thm1/no-label-stuck" + ("" if not label else "/with-label"),
        "Thm. 1 (§2.7)",
        stuck.mean(),
        0.75,
        instances,
        "fraction of instances ending at a critical point of the SG system "
        "(‖SG·X̄ᵀ‖ ≤ 1e-6‖∂L/∂W‖, ‖∂E/∂(A,B,C)‖ ≤ 1e-6‖∂L/∂W(0)‖) with ‖∂L/∂W‖ ≥ 0.1 of "
        f"its value at W = 0; median ‖∂L/∂W‖/‖∂L/∂W(0)‖ = {np.median(true_g / g0):.2g}, "
        f"median ‖SG·X̄ᵀ‖/‖∂L/∂W‖ = {np.median(upd / np.maximum(true_g, 1e-300)):.1e}; "
        f"gap/initial gap: median {np.median(gap / gap0):.2f}; threshold 0.75: on ~2% of "
        "instances the label-free SG still lowers ‖∂L/∂W‖ below 0.1 of its start",
    )
    if label:
        return [conv, control(mech, "the label-conditioned SG does not get stuck")]
    return [control(conv, "SG(p) = αp + γ without the label"), mech]
