"""What destabilises the SG pipeline (issue 29 item 1)? Variants of one 2-group pipeline
on MNIST, all run on one device (the pipeline's own single-device schedule, which the
mesh runners equal):

  pipeline    the schedule as it runs on devices (``sg_reference``): stage 0 uses SG_0 as
              regressed through micro-batch t − 2 while it trains on micro-batch t
  fresh       SG_0 regresses on last tick's (h, target) *before* stage 0 uses it, as
              sequential DNI does (on devices stage 0 would then wait for stage 1)
  extrap      the pipeline's schedule, stage 0 using φ + (φ − φ_prev): SG_0 extrapolated
              one regression step ahead (needs nothing from this tick: still unlocked)
  lead        the library's pipeline as it is now (``sg_pipeline(lead=True)``, the default):
              ``extrap`` written in the library, for every runner
  sequential  the rule ``synthetic_gradients(at=(cut,))`` on one device, same modules
  ``-sgd`` after a variant: the SG modules trained by SGD instead of Adam

Usage: python scripts/pipeline_stability.py SIZES CUT SEED STEPS LR SG_LR VARIANT
(one JSON line: test accuracy every 200 micro-batches of 128, CPU seconds).
"""

import json
import sys
import time

import jax
import numpy as np
import optax
from jax import lax

from sgjax import nets, pipeline, rules, train
from sgjax.infra import data
from sgjax.pipeline.stages import Message, SGState, _check_stream, _sg_update, _stage_update


def main() -> None:
    sizes = [int(s) for s in sys.argv[1].split(",")]
    cut, seed, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    lr, sg_lr, variant = float(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
    B, CH = 128, 50
    ds = data.load("mnist")
    net = nets.mlp(sizes)
    opt = optax.adam(lr)
    sgo = optax.sgd(sg_lr) if variant.endswith("-sgd") else optax.adam(sg_lr)
    variant = variant.removesuffix("-sgd")
    pnet = nets.group(net, [cut])
    # the variants below lead (or not) by hand; "lead" is the library's own (sg_pipeline's default)
    pipe = pipeline.sg_pipeline(pnet, "xent", opt, sgo, lead=variant == "lead")
    st = pipeline.init_sg(pipe, jax.random.key(seed), batch_size=B)

    def fresh(st, xs, ys):
        xs, y_vec, valid = _check_stream(pipe.net, B, xs, ys, None)

        def tick(st, inp):
            inbox = [Message(*inp), *st.outbox]
            p1, o1, _h1, g1, loss, _acc, _ = _stage_update(
                pipe, 1, st.params[1], st.opt_state[1], (), inbox[1]
            )
            phi, sgopt, _, _ = _sg_update(
                pipe, st.sg_params[0], st.sg_opt_state[0], st.outbox[0], g1
            )
            p0, o0, h0, _, _, _, _ = _stage_update(
                pipe, 0, st.params[0], st.opt_state[0], phi, inbox[0]
            )
            new = SGState(
                (p0, p1),
                (o0, o1),
                (phi,),
                (sgopt,),
                (Message(h0, inbox[0].y, inbox[0].valid),),
                st.tick + 1,
            )
            return new, loss

        return lax.scan(tick, st, (xs, y_vec, valid))

    def extrap(st, xs, ys):
        """The pipeline's schedule, but stage 0 uses φ + (φ − φ_prev): the SG one regression
        step ahead, extrapolated (keeps update unlocking: needs no target of this tick)."""
        xs, y_vec, valid = _check_stream(pipe.net, B, xs, ys, None)

        def tick(carry, inp):
            st, prev = carry
            inbox = [Message(*inp), *st.outbox]
            ahead = jax.tree.map(lambda a, b: 2 * a - b, st.sg_params[0], prev)
            p0, o0, h0, _, _, _, _ = _stage_update(
                pipe, 0, st.params[0], st.opt_state[0], ahead, inbox[0]
            )
            p1, o1, _h1, g1, loss, _acc, _ = _stage_update(
                pipe, 1, st.params[1], st.opt_state[1], (), inbox[1]
            )
            phi, sgopt, _, _ = _sg_update(
                pipe, st.sg_params[0], st.sg_opt_state[0], st.outbox[0], g1
            )
            new = SGState(
                (p0, p1),
                (o0, o1),
                (phi,),
                (sgopt,),
                (Message(h0, inbox[0].y, inbox[0].valid),),
                st.tick + 1,
            )
            return (new, st.sg_params[0]), loss

        (st, _), l = lax.scan(tick, (st, st.sg_params[0]), (xs, y_vec, valid))
        return st, l

    def sequential(st, xs, ys):
        """The rule on one device over the same micro-batches (its state in ``st``'s place)."""

        def one(state, b):
            return step(state, b)[0], None

        return lax.scan(one, st, (xs, ys))[0], None

    if variant == "sequential":
        rule = rules.synthetic_gradients(at=(cut,), sg_optimizer=sgo)
        st = train.init(jax.random.key(seed), net, rule, opt)
        step = train.make_step(net, rule, "xent", opt)
        tick = jax.jit(sequential)
    elif variant in ("pipeline", "lead"):
        tick = jax.jit(lambda s, x, y: pipeline.sg_reference(pipe, s, x, y))
    elif variant == "extrap":
        tick = jax.jit(extrap)
    else:
        tick = jax.jit(fresh)
    it = train.batches(ds.x_train, ds.y_train, B, seed=seed)
    curve = []
    t0 = time.process_time()
    for c in range(steps // CH):
        xs, ys = map(np.stack, zip(*(next(it) for _ in range(CH))))
        st, _ = tick(st, xs, ys)
        if (c + 1) % 4 == 0:
            p = (
                st.params
                if variant == "sequential"
                else nets.ungroup_params(st.params, [cut], net.depth)
            )
            curve.append(
                (
                    (c + 1) * CH,
                    round(train.evaluate(net, p, "xent", ds.x_test, ds.y_test)["accuracy"], 4),
                )
            )
    print(
        json.dumps(
            {
                "variant": variant,
                "sizes": sizes,
                "cut": cut,
                "seed": seed,
                "lr": lr,
                "sg_lr": sg_lr,
                "curve": curve,
                "cpu": time.process_time() - t0,
            }
        )
    )


if __name__ == "__main__":
    main()
