"""Speed per character and activation memory of recurrent DNI (``dni-rnn`` bench row).

Usage::

    python scripts/bench_recurrent.py [--hidden 128] [--batch 32] [--window 8]
        [--length 240] [--rounds 5] [--lengths 64 256 1024] [--json out.json]

Prints µs per character for a DNI-T window step, a BPTT-T window step and full BPTT over
the sequence (interleaved rounds, median), and XLA's temp (activation) bytes of a DNI-T
window vs full BPTT over each length.
"""

from __future__ import annotations

import argparse

from sgjax.apps.bench import recurrent_speed as bench
from sgjax.infra import jsonio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--length", type=int, default=240)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.json:  # refuse an unwritable path before the benchmark, not after it
        jsonio.check_writable(a.json, name="--json")
    s = bench.speed(a.hidden, a.batch, a.window, a.length, a.rounds)
    m = bench.memory(a.hidden, a.batch, a.window, a.lengths)
    us = {k: v * 1e6 for k, v in s["seconds_per_char"].items()}
    print(
        f"LSTM {a.hidden}, batch {a.batch}, T={a.window}, sequence {a.length}, "
        f"{a.rounds} rounds (median)"
    )
    print("| method | µs / char |\n|---|---|")
    for k, v in us.items():
        print(f"| {k} | {v:.2f} |")
    print(
        f"DNI-T / BPTT-T: {s['dni_over_bptt']:.2f}×, DNI-T / full BPTT: {s['dni_over_full']:.2f}×\n"
    )
    print("| L | DNI-T window temp bytes | full BPTT temp bytes | ratio |\n|---|---|---|---|")
    for r in m:
        print(
            f"| {r['length']} | {r['dni_bytes']:,} | {r['full_bptt_bytes']:,} | {r['ratio']:.1f}× |"
        )
    if a.json:
        jsonio.write_or_keep(a.json, {"speed": s, "memory": m}, name="--json")  # strict JSON


if __name__ == "__main__":
    main()
