"""Minimal reproducer of an XLA:CPU miscompile (jax/jaxlib 0.10.2), issue 11 item 13.

A dot with a broadcast-constant operand (``e @ ones``) fused with ``abs`` and a
``reduce_max`` returns wrong values once the dot has ≥ ~600 rows: XLA's
``dot-library-rewriter`` pass turns the fusion into a YNNPACK call (``__ynn_fusion``).
Eager execution, ``XLA_FLAGS=--xla_disable_hlo_passes=dot-library-rewriter``, or
passing the ones as a runtime array all give 0. float32 is affected as well.

Run: ``python scripts/xla_ynn_repro.py`` (prints the max error per batch size).
"""

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)


def err(e: jax.Array, s: jax.Array) -> jax.Array:
    got = (e @ jnp.ones((e.shape[-1], 7))).reshape((*s.shape, 7))  # every column Σ_k e_k
    return jnp.max(jnp.abs(got - s[..., None]), axis=(1, 2))


def err_ones_arg(e: jax.Array, s: jax.Array, ones: jax.Array) -> jax.Array:
    got = (e @ ones).reshape((*s.shape, 7))
    return jnp.max(jnp.abs(got - s[..., None]), axis=(1, 2))


if __name__ == "__main__":
    print("jax", jax.__version__)
    for b in (8, 35, 36, 39, 64):
        e = np.random.default_rng(0).normal(size=(b * 16, 3))
        s = e.sum(-1).reshape(b, 16)
        print(
            f"batch {b * 16:5d} rows: jit {float(jax.jit(err)(e, s).max()):.3g}, "
            f"eager {float(err(e, s).max()):.3g}, ones passed in "
            f"{float(jax.jit(err_ones_arg)(e, s, np.ones((3, 7))).max()):.3g}"
        )
