"""Multi-process faults (issue 27, case 6): the coordinator's port taken, a dead rank,
the launcher stopped — each one clear line, nothing hanging."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGJAX_")}
    return {**env, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **extra}


def test_a_taken_coordinator_port_is_one_line_before_jax_starts():
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env = _env(SGJAX_COORDINATOR=f"127.0.0.1:{port}", SGJAX_NUM_PROCESSES="2",
                   SGJAX_PROCESS_ID="0")  # fmt: skip
        argv = ["train", "--pipeline", "2", "--steps", "2", "--no-progress"]
        res = subprocess.run([sys.executable, "-m", "sgjax", *argv], env=env,
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert res.returncode == 1, res.stderr[-2000:]
    assert res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert f"SGJAX_COORDINATOR=127.0.0.1:{port} is in use" in res.stderr
