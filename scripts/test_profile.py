"""Where the test suite's time goes: sums the per-test records that
``SGJAX_TEST_PROFILE=FILE python -m pytest ...`` writes (tests/conftest.py), by file and
by test, heaviest first.

Usage::

    SGJAX_TEST_COLD=1 SGJAX_TEST_PROFILE=/tmp/prof python -m pytest -q -n 2 --dist loadfile
    python scripts/test_profile.py /tmp/prof [--top 40]
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict


def load(prefix: str) -> list[dict]:
    """Every record of the run whose files start with ``prefix`` (one per worker)."""
    files = sorted(
        f for f in glob.glob(f"{glob.escape(prefix)}.*") if f.rsplit(".", 1)[1].isdigit()
    )
    if not files:
        raise SystemExit(f"test_profile: no files {prefix}.<pid>: run pytest with "
                         f"SGJAX_TEST_PROFILE={prefix} first")  # fmt: skip
    recs = []
    for f in files:
        with open(f) as fh:
            recs += [json.loads(line) for line in fh if line.strip()]
    return recs


def table(rows: dict[str, dict], top: int) -> list[str]:
    keys = ("wall_s", "backend_s", "lower_s", "trace_s", "programs")
    out = [f"{'wall s':>8} {'XLA s':>8} {'lower s':>8} {'trace s':>8} {'programs':>8}  name"]
    for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["wall_s"])[:top]:
        out.append(" ".join(f"{r[k]:8.1f}" if k != "programs" else f"{r[k]:8d}"
                            for k in keys) + f"  {name}")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python scripts/test_profile.py")
    p.add_argument("prefix")
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args(argv)
    recs = load(a.prefix)
    by_file: dict[str, dict] = defaultdict(lambda: defaultdict(float))
    by_test: dict[str, dict] = {}
    for r in recs:
        f = r["id"].split("::")[0]
        for k in ("wall_s", "backend_s", "lower_s", "trace_s"):
            by_file[f][k] += r[k]
        by_file[f]["programs"] = int(by_file[f]["programs"] + r["programs"])
        by_test[r["id"]] = r
    total = {k: sum(r[k] for r in recs) for k in ("wall_s", "backend_s", "lower_s", "trace_s")}
    print(
        f"{len(recs)} tests: {total['wall_s']:.0f} s in tests, of which XLA compiling "
        f"{total['backend_s']:.0f} s, lowering {total['lower_s']:.0f} s, tracing "
        f"{total['trace_s']:.0f} s; {sum(r['programs'] for r in recs)} programs compiled"
    )
    print("\nby file:")
    print("\n".join(table(by_file, a.top)))
    print("\nby test:")
    print("\n".join(table(by_test, a.top)))


if __name__ == "__main__":
    main()
