"""The ``recurrent`` section of ``sgjax bench``: recurrent DNI against truncated and full BPTT.

Wraps :func:`sgjax.apps.bench.recurrent_speed.bench_row` (LSTM character model): seconds
per character of a DNI-T window step, a BPTT-T window step and full BPTT over the sequence,
timed in interleaved rounds, and XLA's activation (temp) bytes of one DNI-T window against full BPTT
over the whole sequence.
"""

from __future__ import annotations

from typing import Any


def bench_recurrent(cfg: dict[str, Any]) -> dict[str, Any]:
    from sgjax.apps.bench import recurrent_speed

    return recurrent_speed.bench_row(**cfg["recurrent"])


def format_recurrent(r: dict[str, Any]) -> str:
    us = {k: v * 1e6 for k, v in r["seconds_per_char"].items()}
    m = r["memory"]
    return "\n".join(
        [
            f"\nRecurrent DNI (LSTM {r['hidden']}, batch {r['batch']}, T = {r['window']}, "
            f"sequence {r['length']}; median of {r['rounds']} interleaved rounds)",
            "| method | µs / char |",
            "|---|---|",
            *(f"| {k} | {v:.2f} |" for k, v in us.items()),
            f"DNI-T / BPTT-T: {r['dni_over_bptt']:.2f}×   DNI-T / full BPTT: "
            f"{r['dni_over_full']:.2f}×",
            f"activation memory at L = {m['length']}: DNI-T window {m['dni_bytes']:,} B, "
            f"full BPTT {m['full_bptt_bytes']:,} B ({m['ratio']:.1f}×)",
        ]
    )
