"""The probe behind ``gap.md``: truncated BPTT-8 trained exactly as ``rnn.train_lm`` trains
it (the same window step and optimiser from ``rnn._machinery``, 32 streams, chunks of 240),
scored at a few character counts under several evaluation protocols.

Usage (from the repository root, one core)::

    taskset -c 0 python scripts/lm_gap_probe.py train 5e6 1e6,3e6,5e6
    ALL=1 ...      # also: 1 stream, resets every chunk, first 10k characters, a train slice
    CLIP=0 ...     # no gradient clipping
    HID=256 ...    # LSTM 256
    ... leak 5e6 1e6,3e6,5e6   # train on the training AND validation text (a leak)

Each evaluation prints one JSON line: ``val32`` is the harness's protocol (the whole
validation text in 32 carried streams); ``valA``/``valB`` its first and second half (16
streams each, contiguous); ``val1`` one carried stream; ``val32_reset`` the state reset
every 240 characters; ``val_first10k`` the first 10,000 validation characters;
``trainslice`` the first 111k characters of the training split, scored like the validation.
"""

import json
import os
import sys
import time

import jax
import numpy as np

from sgjax.apps.experiments import rnn
from sgjax.recurrent import core, tasks


def main() -> None:
    mode, chars = sys.argv[1], int(float(sys.argv[2]))
    evals_at = [int(float(v)) for v in sys.argv[3].split(",")]
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    data = tasks.load_tinyshakespeare("../shared/data/tinyshakespeare")
    V = len(data.vocab)
    HID = int(os.environ.get("HID", 128))
    LR = float(os.environ.get("LR", 1e-3))
    CLIP = float(os.environ.get("CLIP", 1.0))
    lm = dict(hidden=HID, batch=32, chunk=240, eval_chars=None, lr=LR, sg_lr=1e-3, decay=0.5)
    cfg = {"lm": dict(lm, chars=chars, evals=10), "clip": CLIP, "aux_weight": 0.1}
    h, step, opt, sg_opt = rnn._machinery("xent", V, V, HID, "bptt", 8, cfg, cfg["lm"], 0)
    model = h.model
    state = core.init(h, jax.random.key(seed), opt, sg_opt)
    B, chunk = 32, 240
    text = data.train if mode == "train" else np.concatenate([data.train, data.valid])
    S = tasks.streams(text, B)
    ev = rnn._evaluator(model)

    def bpc(ids, batch, reset=False, chunk=240):
        St = tasks.streams(ids, batch)
        n = St.shape[0] - 1
        carry = np.zeros((batch, model.cell.state_dim), np.float32)
        tot = cnt = 0.0
        for p in range(0, n, chunk):
            q = min(p + chunk, n)
            x = np.zeros((chunk, batch), np.int64)
            y = np.zeros((chunk, batch), np.int64)
            m = np.zeros((chunk, batch), np.float32)
            x[: q - p], y[: q - p], m[: q - p] = St[p:q], St[p + 1 : q + 1], 1.0
            if reset:
                carry = np.zeros_like(carry)
            s, c, carry = ev(state.params, carry, tasks.one_hot(x, V), y, m)
            tot += float(s)
            cnt += float(c)
        return tot / cnt * tasks.BITS_PER_NAT

    n_chunks = chars // (chunk * B)
    carry, p, tl = None, 0, []
    c0 = time.process_time()
    for i in range(1, n_chunks + 1):
        if p + chunk + 2 > S.shape[0]:
            p, carry = 0, None
        ids = S[p : p + chunk + 1]
        x, y = tasks.one_hot(ids[:-1], V), ids[1:]
        first = carry is None
        state, carry, met = core.train_sequence(
            h, step, state, x, y, carry=carry, first=first, last=False
        )
        tl.append(float(met["loss"]) * B / float(met["count"]) * tasks.BITS_PER_NAT)
        p += chunk
        done = i * chunk * B
        if evals_at and (done >= evals_at[0] or i == n_chunks):
            evals_at.pop(0)
            r = {
                "chars": done,
                "cpu": round(time.process_time() - c0, 1),
                "val32": bpc(data.valid, 32),
                "train_last10pct": float(np.mean(tl[-max(1, len(tl) // 10) :])),
            }
            nv = len(data.valid) // 2
            r.update(valA=bpc(data.valid[:nv], 16), valB=bpc(data.valid[nv:], 16))
            if mode == "train" and os.environ.get("ALL"):
                r.update(
                    val1=bpc(data.valid, 1, chunk=2400),
                    val32_reset=bpc(data.valid, 32, reset=True),
                    val_first10k=bpc(data.valid[:10000], 8),
                    trainslice=bpc(data.train[: len(data.valid)], 32),
                )
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
