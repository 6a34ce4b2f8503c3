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

4. **the faults of issue 27**: SIGTERM, SIGHUP and SIGUSR1 from outside, one after the
   other on one run (each lands after a new checkpoint appeared), then ``--resume``; a
   second run started on a directory in use (with and without ``--resume``); a full disk
   (a tmpfs with room for two and a half checkpoints, when this runs as root; else ENOSPC
   injected into the writer), then room made and ``--resume``; checkpoints of an older
   sgjax (no hashes, no format mark): refused, untouched, then
   ``--adopt-older-checkpoints``; and a ``--pipeline 2`` job in two processes
   (``sgjax launch``) whose rank 1 is killed with SIGKILL, resumed, stopped with SIGTERM
   to the launcher, resumed again, and compared with an uninterrupted job.

Each resumed run must end bit-identical to the reference (every leaf of the final
checkpointed state, ``np.array_equal``; and the JSON results), or be refused with a clear
message; the final checkpoint must verify.

Usage::

    python scripts/fault_injection.py --out docs/results/fault-injection [--seed 0]

Writes ``report.md`` and ``results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
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

    if kind == "slow":  # k ms of sleep before each step (the results do not change)
        orig_get = runner.StepCache.get

        def slowed(self, *a, **kw):
            fn = orig_get(self, *a, **kw)

            def step(state, batch):
                time.sleep(k / 1000)
                return fn(state, batch)

            return step

        runner.StepCache.get = slowed
    elif kind == "step":  # before training step k + 1 runs (state.step == k)
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
    elif kind == "enospc":  # the disk is full from the save of step k on
        import errno

        orig = checkpoint.write_manifest

        def full(where: Path) -> None:
            if int(where.name) >= k:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
            orig(where)

        checkpoint.write_manifest = full
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
        # listed, not opened: opening it would take over the killed run's lock, and the
        # resume that follows should find (and explain) it
        left = sorted(int(p.name) for p in kill_dir.iterdir() if p.name.isdigit())
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

    rows += _faults_27(work, logs, rng, argv_of=lambda d: [*TRAIN, "--steps", str(STEPS),
                       "--checkpoint-dir", str(d)], ref_state=ref_state,
                       ref_results=ref_results, part=part)  # fmt: skip

    ok = (
        all(r.get("bit_identical", True) and r.get("killed", True) for r in rows)
        and all(
            r.get("refused_in_one_line", True) and r.get("directory_untouched", True) for r in rows
        )
        and all(r.get("clean_stop", True) and r.get("kept_verify", True) for r in rows)
    )
    summary = {
        "all_ok": ok, "seed": args.seed, "steps": STEPS, "checkpoint_every": EVERY,
        "seconds": time.perf_counter() - t_all, "load_average": os.getloadavg(),
        "reference": ref_results, "scenarios": rows,
    }  # fmt: skip
    summary = jsonio.loads_strict(_anonymous(jsonio.dumps(summary), work))
    jsonio.write(args.out / "results.json", summary)
    (args.out / "report.md").write_text(_report(summary))
    for log in logs.iterdir():  # keep the logs free of the scratch path
        log.write_text(_anonymous(log.read_text(), work))
    print(_report(summary))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


# --------------------------------------------------------------------------------------
# Section 4: the faults of issue 27.


def _popen(argv: list[str], spec: str | None = None) -> tuple[subprocess.Popen, list[str], float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if spec is None:
        cmd = [sys.executable, "-m", "sgjax", *argv]
    else:
        cmd = [sys.executable, __file__, "--child", spec, "--note", os.devnull, "--", *argv]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    return proc, cmd, time.perf_counter()


def _finish(proc: subprocess.Popen, cmd: list[str], t0: float, log: Path) -> tuple[int, str]:
    out, err = proc.communicate(timeout=900)
    log.write_text(f"$ {' '.join(cmd)}\n[{time.perf_counter() - t0:.1f} s, rc {proc.returncode}]\n"
                   f"--- stdout\n{out}--- stderr\n{err}")  # fmt: skip
    return proc.returncode, err


def _verified_steps(d: Path) -> list[int]:
    from sgjax.infra import checkpoint

    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir()
                  if p.name.isdigit() and (p / checkpoint.MANIFEST).exists())  # fmt: skip


def _wait_checkpoint_after(proc: subprocess.Popen, d: Path, after: int) -> int | None:
    """Wait until ``d`` holds a hashed checkpoint newer than ``after`` (None: the process
    ended first, or 600 s passed)."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        newer = [s for s in _verified_steps(d) if s > after]
        if newer:
            return newer[-1]
        time.sleep(0.02)
    return None


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[Gloo]")]


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _pipeline_leaves(d: Path, step: int) -> list:
    import numpy as np

    with np.load(d / str(step) / "state.npz") as z:
        return [z[k] for k in sorted(z.files)]


def _faults_27(work, logs, rng, *, argv_of, ref_state, ref_results, part) -> list[dict]:
    import json

    import numpy as np

    from sgjax.infra import checkpoint

    rows: list[dict] = []

    # 4a. SIGTERM, SIGHUP, SIGUSR1 in turn on one run, each after a new checkpoint
    d = work / "signals"
    shutil.rmtree(d, ignore_errors=True)
    argv = [*argv_of(d), "--json", str(work / "signals.json")]
    newest = 0
    for i, name in enumerate(("SIGTERM", "SIGHUP", "SIGUSR1")):
        signum = getattr(signal, name)
        proc, cmd, t0 = _popen(argv if i == 0 else [*argv, "--resume"])
        after = _wait_checkpoint_after(proc, d, newest)
        time.sleep(float(rng.uniform(0.0, 0.2)))
        landed = proc.poll() is None
        proc.send_signal(signum)
        rc, err = _finish(proc, cmd, t0, logs / f"30-{name}.log")
        newest = max(_verified_steps(d) or [0])
        said = _lines(err)
        rows.append({"scenario": f"{name} from outside", "rc": rc,
                     "injected": f"{name} after checkpoint {after} appeared" if landed
                     else "the run ended before the signal",
                     "clean_stop": landed and rc == 128 + signum and "Traceback" not in err
                     and any(f"stopped by {name}" in ln and f"checkpoint of step {newest} saved"
                             in ln for ln in said),
                     "checkpoints_after": _verified_steps(d), "message": said[:2]})  # fmt: skip
    rc, err = _run([*argv, "--resume"], log=logs / "33-signals-final-resume.log")[0::2]
    _, problems, state = _final_state(d)
    rows.append({"scenario": "final --resume after the 3 signals", "rc": rc,
                 "resume_warning": [ln for ln in err.splitlines() if "warning" in ln],
                 "final_checkpoint_verifies": not problems,
                 "bit_identical": rc == 0 and _same(state, ref_state)
                 and _results(work / "signals.json") == ref_results})  # fmt: skip

    # 4b. two writers: a second run on a directory in use, fresh and with --resume
    d = work / "two-writers"
    shutil.rmtree(d, ignore_errors=True)
    js = work / "two-writers.json"
    first, cmd_a, t_a = _popen([*argv_of(d), "--json", str(js)], spec="slow:20")
    _wait_checkpoint_after(first, d, 0)
    for j, extra in enumerate(([], ["--resume"])):
        rc, _, err = _run([*argv_of(d), *extra], log=logs / f"34-second-writer-{j}.log")
        said = _lines(err)
        rows.append({"scenario": "a second run on the directory" + (" with --resume" if extra
                     else ""), "injected": "while the first run trains", "rc": rc,
                     "message": said, "first_still_running": first.poll() is None,
                     "refused_in_one_line": rc == 1 and len(said) == 1
                     and "in use by another run" in said[0]})  # fmt: skip
    rc, err = _finish(first, cmd_a, t_a, logs / "35-first-writer.log")
    _, problems, state = _final_state(d)
    rows.append({"scenario": "the first run, undisturbed", "rc": rc,
                 "final_checkpoint_verifies": not problems,
                 "bit_identical": rc == 0 and _same(state, ref_state)
                 and _results(js) == ref_results})  # fmt: skip

    # 4c. a full disk during a save: a small tmpfs (root), else ENOSPC injected
    disk = work / "disk"
    disk.mkdir(exist_ok=True)
    one = sum(-(-p.stat().st_size // 4096) * 4096 for p in (part / "400").rglob("*")
              if p.is_file()) + 4096 * len(list((part / "400").rglob("*")))  # fmt: skip
    size_kb = int(2.5 * one / 1024) + 16
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(disk)],
        capture_output=True, check=False).returncode == 0  # fmt: skip
    d = disk / "ck"
    js = work / "disk.json"
    try:
        spec = None if mounted else "enospc:200"
        proc, cmd, t0 = _popen([*argv_of(d), "--json", str(js)], spec=spec)
        rc, err = _finish(proc, cmd, t0, logs / "36-disk-full.log")
        said = _lines(err)
        kept = _verified_steps(d)
        leftovers = [p.name for p in d.iterdir() if not p.name.isdigit() and p.name != "sgjax.lock"]
        rows.append({"scenario": "disk full during a save", "rc": rc,
                     "injected": f"a {size_kb} KiB tmpfs (a checkpoint takes ~{one // 1024} KiB)"
                     if mounted else "ENOSPC from the writer from step 200 on",
                     "message": said, "checkpoints_after": kept, "leftovers": leftovers,
                     "refused_in_one_line": rc == 1 and len(said) == 1 and "errno 28" in said[0],
                     "kept_verify": bool(kept) and not leftovers
                     and all(not checkpoint.verify(d / str(k)) for k in kept)})  # fmt: skip
        if mounted:  # room again
            subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        rc, _, err = _run([*argv_of(d), "--resume", "--json", str(js)],
                          log=logs / "37-disk-resume.log")  # fmt: skip
        _, problems, state = _final_state(d)
        rows.append({"scenario": "--resume once there is room", "rc": rc,
                     "final_checkpoint_verifies": not problems,
                     "bit_identical": rc == 0 and _same(state, ref_state)
                     and _results(js) == ref_results})  # fmt: skip
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)

    # 4d. checkpoints of an older sgjax: no hashes, no format mark
    d = work / "older"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(part, d)
    for step_dir in (p for p in d.iterdir() if p.name.isdigit()):
        (step_dir / checkpoint.MANIFEST).unlink()
        meta_file = step_dir / "meta" / "metadata"
        meta = json.loads(meta_file.read_text())
        meta.pop(checkpoint.FORMAT_KEY)
        meta_file.write_text(json.dumps(meta))
    before = _tree(d)
    rc, _, err = _run([*argv_of(d), "--resume"], log=logs / "38-older.log")
    said = _lines(err)
    rows.append({"scenario": "an older sgjax's checkpoints, --resume", "rc": rc,
                 "injected": "hash manifests and format marks removed (steps "
                 f"{sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())})",
                 "message": said, "refused_in_one_line": rc == 1 and len(said) == 1
                 and "older sgjax" in said[0],
                 "directory_untouched": _tree(d) == before})  # fmt: skip
    js = work / "older.json"
    rc, _, err = _run([*argv_of(d), "--resume", "--adopt-older-checkpoints", "--json", str(js)],
                      log=logs / "39-older-adopted.log")  # fmt: skip
    _, problems, state = _final_state(d)
    rows.append({"scenario": "the same with --adopt-older-checkpoints", "rc": rc,
                 "final_checkpoint_verifies": not problems,
                 "bit_identical": rc == 0 and _same(state, ref_state)
                 and _results(js) == ref_results})  # fmt: skip

    # 4e. a --pipeline 2 job in two processes: rank 1 killed, then the launcher stopped
    pipe = ["train", "--pipeline", "2", "--dataset", "digits", "--width", "32", "--steps",
            "600", "--checkpoint-every", "100", "--no-progress"]  # fmt: skip
    launch = ["launch", "-n", "2", "--"]
    pref, pk = work / "pipe-ref", work / "pipe-cut"
    for x in (pref, pk):
        shutil.rmtree(x, ignore_errors=True)
    rc, _, _ = _run([*launch, *pipe, "--checkpoint-dir", str(pref), "--json",
                     str(work / "pipe-ref.json")],
                    log=logs / "40-pipeline-reference.log")  # fmt: skip
    assert rc == 0, "the pipeline reference failed; see logs/40-pipeline-reference.log"
    argv = [*launch, *pipe, "--checkpoint-dir", str(pk), "--json", str(work / "pipe-cut.json")]
    proc, cmd, t0 = _popen(argv)
    after = _wait_checkpoint_after(proc, pk, 0)
    killed = None
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                              check=False).stdout.split():  # fmt: skip
        with contextlib.suppress(OSError):
            if b"SGJAX_PROCESS_ID=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(int(pid), signal.SIGKILL)
                killed = int(pid)
    rc, err = _finish(proc, cmd, t0, logs / "41-pipeline-rank-killed.log")
    said = _lines(err)
    rows.append({"scenario": "--pipeline 2 in 2 processes: rank 1 killed", "rc": rc,
                 "injected": f"SIGKILL to rank 1 after checkpoint {after} appeared"
                 if killed else "rank 1 not found", "message": said[:3],
                 "clean_stop": killed is not None and rc == 1 and "Traceback" not in err
                 and any("rank 1 of 2 was killed by signal 9" in ln for ln in said)
                 and any("lost contact" in ln for ln in said),
                 "checkpoints_after": _verified_steps(pk)})  # fmt: skip
    newest = max(_verified_steps(pk) or [0])
    proc, cmd, t0 = _popen([*argv, "--resume"])
    after = _wait_checkpoint_after(proc, pk, newest)
    landed = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    rc, err = _finish(proc, cmd, t0, logs / "42-pipeline-launcher-sigterm.log")
    said = _lines(err)
    rows.append({"scenario": "--pipeline 2: SIGTERM to the launcher", "rc": rc,
                 "injected": f"SIGTERM after checkpoint {after} appeared" if landed
                 else "the job ended before the signal", "message": said[-2:],
                 "clean_stop": landed and rc == 143 and "Traceback" not in err
                 and sum("(exit status 143): sgjax train: stopped by SIGTERM" in ln
                         for ln in said) == 2,
                 "checkpoints_after": _verified_steps(pk)})  # fmt: skip
    rc, _, err = _run([*argv, "--resume"], log=logs / "43-pipeline-final-resume.log")
    keys = ("steps", "final_loss", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    same = rc == 0 and all(
        np.array_equal(u, v) for u, v in zip(_pipeline_leaves(pref, 600), _pipeline_leaves(pk, 600))
    )
    if same:
        a, b = (json.loads((work / f).read_text()) for f in ("pipe-ref.json", "pipe-cut.json"))
        same = all(a[k] == b[k] for k in keys)
    rows.append({"scenario": "--pipeline 2: final --resume", "rc": rc,
                 "resume_warning": [ln for ln in err.splitlines() if "warning" in ln],
                 "final_checkpoint_verifies": not checkpoint.verify(pk / "600"),
                 "bit_identical": same})  # fmt: skip
    return rows


def _anonymous(text: str, work: Path) -> str:
    """The scratch directory as $WORK, the repository as $REPO (also where a lock's
    recorded command, cut at 300 characters, cut a path short)."""
    import re

    text = text.replace(str(work), "$WORK").replace(str(ROOT), "$REPO")
    return re.sub(re.escape(str(work.parent)) + r"/sgjax-faults-\S*", "$WORK…", text)


def _report(s: dict) -> str:
    out = [
        "# Fault injection: kill -9, corruption, signals, two writers, a full disk, an older "
        "format and a killed rank under `--resume`",
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
        elif "clean_stop" in r:
            outcome = ("stopped cleanly" if r["clean_stop"] else "**not clean**") + (
                f", checkpoints left: {r['checkpoints_after']}"
            )
        elif "refused_in_one_line" in r:
            outcome = "refused in one line" if r["refused_in_one_line"] else "**not clean**"
            if "directory_untouched" in r:
                outcome += (", directory untouched" if r["directory_untouched"]
                            else ", **directory changed**")  # fmt: skip
            if "kept_verify" in r:
                kept = f", checkpoints {r['checkpoints_after']} kept and verify"
                outcome += kept if r["kept_verify"] else ", **checkpoints lost or unverified**"
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
