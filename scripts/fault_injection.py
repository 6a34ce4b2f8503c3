"""Fault injection for ``sgjax train --checkpoint-dir … --resume`` (issue 12).

Runs ``sgjax train`` in subprocesses and checks that nothing is lost and nothing is
silently wrong:

1. a reference run, uninterrupted;
2. **kill -9 at 5 seeded random points**, one after the other on the same run, each
   followed by ``--resume`` (which is itself killed at the next point), then a final
   ``--resume`` to the end. The points are drawn from five kinds: between two training
   steps, inside orbax's save (the checkpoint is still in its temporary directory), after
   orbax's commit but before the SHA-256 manifest is written (an unverified checkpoint),
   inside the manifest write, and from outside at a seeded random time;
3. **checkpoint corruption** of the newest checkpoint of a finished partial run — bytes
   flipped in a data file, a data file truncated, a data file zeroed, the array metadata
   deleted, the metadata JSON truncated — each followed by ``--resume``; and every
   checkpoint corrupted, which must be refused with one clear line.

Each resumed run must end bit-identical to the reference (every leaf of the final
checkpointed state, ``np.array_equal``; and the JSON results), or be refused with a clear
message; the final checkpoint must verify.

Usage::

    python scripts/fault_injection.py --out docs/results/fault-injection [--seed 0]

Writes ``report.md`` and ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 600, 50
TRAIN = [
    "train", "--dataset", "digits", "--depth", "2", "--width", "64", "--seed", "0",
    "--checkpoint-every", str(EVERY), "--no-progress",
]  # fmt: skip


# --------------------------------------------------------------------------------------
# The child: `sgjax train` with a self-kill hook (a SIGKILL, as `kill -9` sends).


def _die(note: Path, what: str) -> None:
    note.write_text(what)
    os.kill(os.getpid(), signal.SIGKILL)


def child(spec: str, note: Path, argv: list[str]) -> int:
    kind, _, arg = spec.partition(":")
    k = int(arg) if arg else -1
    from sgjax.infra import checkpoint, runner

    if kind == "step":  # before training step k + 1 runs (state.step == k)
        orig = runner.StepCache.get

        def patched(self, *a, **kw):
            fn = orig(self, *a, **kw)

            def step(state, batch):
                if int(state.step) == k:
                    _die(note, f"killed before step {k + 1}")
                return fn(state, batch)

            return step

        runner.StepCache.get = patched
    elif kind == "orbax":  # inside orbax's save of step k: the items are being written
        import orbax.checkpoint as ocp

        orig_save = ocp.JsonCheckpointHandler.async_save

        async def async_save(self, directory, *a, **kw):
            d = Path(str(directory))
            if d.parent.name.startswith(f"{k}.orbax-checkpoint-tmp"):
                files = sorted(str(p.relative_to(d.parent)) for p in d.parent.rglob("*"))
                _die(note, f"killed inside orbax's save of step {k}; {d.parent.name} held "
                           f"{len(files)} entries")  # fmt: skip
            return await orig_save(self, directory, *a, **kw)

        ocp.JsonCheckpointHandler.async_save = async_save
    elif kind in ("commit", "manifest"):  # after orbax's commit; before/inside the hashing
        orig_manifest = checkpoint.write_manifest

        def write_manifest(where: Path) -> None:
            if where.name == str(k):
                if kind == "commit":
                    _die(note, f"killed after orbax committed step {k}, before hashing it")
                tmp = where / f".{checkpoint.MANIFEST}.tmp"
                tmp.write_text('{"format": 1, "files": {"state/_METAD')  # half written
                _die(note, f"killed while writing the manifest of step {k}")
            orig_manifest(where)

        checkpoint.write_manifest = write_manifest
    from sgjax.apps import cli

    return cli.main(argv)


# --------------------------------------------------------------------------------------
# The driver.


def _run(argv: list[str], *, spec: str | None = None, kill_after: float | None = None,
         log: Path) -> tuple[int, str, str]:  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if spec is None:
        cmd = [sys.executable, "-m", "sgjax", *argv]
    else:
        note = log.with_suffix(".note")
        cmd = [sys.executable, __file__, "--child", spec, "--note", str(note), "--", *argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    if kill_after is not None:
        try:
            out, err = proc.communicate(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n[driver: SIGKILL after {kill_after:.2f} s]"
    else:
        out, err = proc.communicate()
    log.write_text(f"$ {' '.join(cmd)}\n[{time.perf_counter() - t0:.1f} s, rc {proc.returncode}]\n"
                   f"--- stdout\n{out}--- stderr\n{err}")  # fmt: skip
    return proc.returncode, out, err


def _final_state(ckpt_dir: Path):
    import jax
    import optax

    from sgjax import nets, rules, train
    from sgjax.infra import checkpoint, data

    ds = data.load("digits", seed=0)
    net = nets.mlp([ds.x_train.reshape(len(ds.x_train), -1).shape[1], 64, 64, ds.num_classes])
    target = checkpoint.abstract_state(
        train.init, jax.random.key(0), net, rules.synthetic_gradients(), optax.adam(1e-3),
        optax.adam(1e-3),
    )  # fmt: skip
    with checkpoint.Checkpointer(ckpt_dir) as ck:
        steps = ck.steps()
        problems = checkpoint.verify(ckpt_dir / str(steps[-1]))
        state, _ = ck.restore(target, step=steps[-1])
    return steps, problems, state


def _same(a, b) -> bool:
    import jax
    import numpy as np

    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(la, lb)
    )


def _results(path: Path) -> dict:
    from sgjax.infra import jsonio

    r = jsonio.loads_strict(path.read_text())
    return {k: r[k] for k in ("steps", "final_loss", "train_loss", "train_accuracy",
                              "test_loss", "test_accuracy", "sg_loss")}  # fmt: skip


def _data_file(step_dir: Path) -> Path:
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _flip(step_dir: Path) -> str:
    p = _data_file(step_dir)
    b = bytearray(p.read_bytes())
    n, o = min(4096, len(b) // 2), len(b) // 4
    b[o : o + n] = bytes(v ^ 0xFF for v in b[o : o + n])
    p.write_bytes(bytes(b))
    return f"flipped {n} bytes of {p.relative_to(step_dir.parent)}"


def _truncate(step_dir: Path) -> str:
    p = _data_file(step_dir)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return f"truncated {p.relative_to(step_dir.parent)} to half"


def _zero(step_dir: Path) -> str:
    p = _data_file(step_dir)
    p.write_bytes(bytes(p.stat().st_size))
    return f"zeroed {p.relative_to(step_dir.parent)}"


def _delete_meta(step_dir: Path) -> str:
    p = step_dir / "state" / "_METADATA"
    p.unlink()
    return f"deleted {p.relative_to(step_dir.parent)}"


def _truncate_json(step_dir: Path) -> str:
    p = step_dir / "meta" / "metadata"
    p.write_text(p.read_text()[: p.stat().st_size // 2])
    return f"truncated the metadata JSON {p.relative_to(step_dir.parent)}"


CORRUPTIONS = {
    "flip 4 KiB": _flip,
    "truncate data file": _truncate,
    "zero data file": _zero,
    "delete array metadata": _delete_meta,
    "truncate metadata JSON": _truncate_json,
}


def main() -> int:
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs/results/fault-injection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir)")
    args = p.parse_args()
    from sgjax.infra import jsonio

    jsonio.check_writable(args.out, name="--out", directory=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="sgjax-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    rows: list[dict] = []
    t_all = time.perf_counter()

    # 1. the reference
    ref_dir = work / "ref"
    shutil.rmtree(ref_dir, ignore_errors=True)
    t_ref = time.perf_counter()
    rc, _, _ = _run([*TRAIN, "--steps", str(STEPS), "--checkpoint-dir", str(ref_dir), "--json",
                     str(work / "ref.json")], log=logs / "00-reference.log")  # fmt: skip
    t_ref = time.perf_counter() - t_ref
    assert rc == 0, "the reference run failed; see logs/00-reference.log"
    _, _, ref_state = _final_state(ref_dir)
    ref_results = _results(work / "ref.json")

    # 2. five kills on one run, at increasing seeded points of five kinds
    kinds = ["step", "orbax", "commit", "manifest", "external"]
    rng.shuffle(kinds)
    saves = list(range(EVERY, STEPS, EVERY))
    points = sorted(rng.choice(saves[:-1], size=5, replace=False).tolist())
    kill_dir = work / "killed"
    shutil.rmtree(kill_dir, ignore_errors=True)
    argv = [*TRAIN, "--steps", str(STEPS), "--checkpoint-dir", str(kill_dir), "--json",
            str(work / "killed.json")]  # fmt: skip
    for i, (kind, at) in enumerate(zip(kinds, points), 1):
        first = i == 1
        run_argv = argv if first else [*argv, "--resume"]
        log = logs / f"{i:02d}-kill-{kind}.log"
        if kind == "external":
            # inside the run however fast the machine: a fraction of the reference's wall time
            delay = float(rng.uniform(0.3, 0.7)) * t_ref
            rc, _, err = _run(run_argv, kill_after=delay, log=log)
            what = f"SIGKILL from outside after {delay:.2f} s" if rc == -9 else "finished first"
        else:
            spec = {"step": f"step:{at + int(rng.integers(1, EVERY))}"}.get(kind, f"{kind}:{at}")
            rc, _, err = _run(run_argv, spec=spec, log=log)
            what = log.with_suffix(".note").read_text() if rc == -9 else f"not killed (rc {rc})"
        from sgjax.infra.checkpoint import Checkpointer

        with Checkpointer(kill_dir) as ck:
            left = ck.steps()
        warn = [line for line in err.splitlines() if "warning" in line]
        rows.append({"scenario": f"kill {i}: {kind}", "injected": what, "rc": rc,
                     "killed": rc == -9,  # a kill that did not land proves nothing
                     "checkpoints_after": left, "resume_warning": warn})  # fmt: skip
    rc, _, err = _run([*argv, "--resume"], log=logs / "06-final-resume.log")
    _, problems, state = _final_state(kill_dir)
    same = rc == 0 and _same(state, ref_state) and _results(work / "killed.json") == ref_results
    rows.append({"scenario": "final --resume after the 5 kills", "rc": rc,
                 "resume_warning": [ln for ln in err.splitlines() if "warning" in ln],
                 "final_checkpoint_verifies": not problems, "bit_identical": same})  # fmt: skip

    # 3. corruption of the newest checkpoint of a partial run (to step 400)
    part = work / "partial"
    shutil.rmtree(part, ignore_errors=True)
    rc, _, _ = _run([*TRAIN, "--steps", "400", "--checkpoint-dir", str(part)],
                    log=logs / "10-partial.log")  # fmt: skip
    assert rc == 0
    for j, (name, corrupt) in enumerate(CORRUPTIONS.items(), 11):
        d = work / f"corrupt-{j}"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(part, d)
        what = corrupt(d / "400")
        js = work / f"corrupt-{j}.json"
        resume = [*TRAIN, "--steps", str(STEPS), "--checkpoint-dir", str(d), "--resume"]
        rc, _, err = _run(
            [*resume, "--json", str(js)], log=logs / f"{j}-{name.replace(' ', '-')}.log"
        )
        _, problems, state = _final_state(d)
        same = rc == 0 and _same(state, ref_state) and _results(js) == ref_results
        rows.append({"scenario": f"corrupt newest: {name}", "injected": what, "rc": rc,
                     "resume_warning": [ln for ln in err.splitlines() if "warning" in ln],
                     "final_checkpoint_verifies": not problems, "bit_identical": same})  # fmt: skip
    d = work / "corrupt-all"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(part, d)
    for s in sorted(p.name for p in d.iterdir() if p.name.isdigit()):
        _zero(d / s)
    before = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    rc, _, err = _run([*TRAIN, "--steps", str(STEPS), "--checkpoint-dir", str(d), "--resume"],
                      log=logs / "20-all-corrupt.log")  # fmt: skip
    after = sorted(str(p.relative_to(d)) for p in d.rglob("*"))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    rows.append({"scenario": "every checkpoint corrupt: must refuse", "injected": "zeroed the "
                 "largest data file of each checkpoint", "rc": rc, "message": lines,
                 "refused_in_one_line": rc == 1 and len(lines) == 1 and "Traceback" not in err,
                 "directory_untouched": before == after})  # fmt: skip

    ok = all(r.get("bit_identical", True) and r.get("killed", True) for r in rows) and all(
        r.get("refused_in_one_line", True) and r.get("directory_untouched", True) for r in rows
    )
    summary = {
        "all_ok": ok, "seed": args.seed, "steps": STEPS, "checkpoint_every": EVERY,
        "seconds": time.perf_counter() - t_all, "load_average": os.getloadavg(),
        "reference": ref_results, "scenarios": rows,
    }  # fmt: skip
    summary = jsonio.loads_strict(jsonio.dumps(summary).replace(str(work), "$WORK"))
    jsonio.write(args.out / "results.json", summary)
    (args.out / "report.md").write_text(_report(summary))
    for log in logs.iterdir():  # keep the logs free of the scratch path
        log.write_text(log.read_text().replace(str(work), "$WORK").replace(str(ROOT), "$REPO"))
    print(_report(summary))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _report(s: dict) -> str:
    out = [
        "# Fault injection: kill -9 and checkpoint corruption under `--resume`",
        "",
        f"`python scripts/fault_injection.py --seed {s['seed']}`: `sgjax train --dataset digits "
        f"--depth 2 --width 64 --steps {s['steps']} --checkpoint-every {s['checkpoint_every']}`; "
        f"{s['seconds']:.0f} s, load average at the end {s['load_average'][0]:.1f} on 2 cores. "
        "Every resumed run is compared with an uninterrupted reference: every leaf of the final "
        "checkpointed state (`np.array_equal`) and the JSON results. The five kills hit one "
        "run in turn (each `--resume` is the run the next kill stops).",
        "",
        f"**All as required: {'yes' if s['all_ok'] else 'NO'}.**",
        "",
        "| # | scenario | injected | exit | outcome |",
        "|---|---|---|---|---|",
    ]
    messages = []
    for i, r in enumerate(s["scenarios"], 1):
        if "bit_identical" in r:
            outcome = "bit-identical to the reference" if r["bit_identical"] else "**DIFFERS**"
            outcome += ", final checkpoint verifies" if r["final_checkpoint_verifies"] else ""
        elif "refused_in_one_line" in r:
            outcome = ("refused in one line" if r["refused_in_one_line"] else "**not clean**") + (
                ", directory untouched" if r["directory_untouched"] else ", **directory changed**"
            )
        else:
            outcome = f"checkpoints left: {r['checkpoints_after']}"
        said = r.get("resume_warning") or r.get("message") or []
        if said:
            outcome += f" (message {i} below)"
            messages += [f"{i}. " + "<br>".join(f"`{m}`" for m in said)]
        out.append(f"| {i} | {r['scenario']} | {r.get('injected', '')} | {r['rc']} | {outcome} |")
    out += ["", "What the runs printed on stderr (scratch directory shown as `$WORK`):", ""]
    out += messages
    out += ["", "Full output of every run: `logs/`."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        spec, note = sys.argv[2], Path(sys.argv[4])
        sys.exit(child(spec, note, sys.argv[sys.argv.index("--") + 1 :]))
    sys.exit(main())
