"""keep_freed_memory: freed blocks are reused, not mapped and page-faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sgjax.infra import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A block allocated, written and freed 5 times, as XLA:CPU does with a call's scratch
# buffer: the page faults per round. 48 MB in the main thread (above glibc's largest
# adaptive mmap threshold, 32 MiB); 96 MB in a new thread (above the 64 MiB heaps of a
# per-thread arena). Plain ctypes malloc/free, so nothing but the C library decides.
_PROBE = """
import ctypes, resource, sys, threading
from sgjax.infra.allocator import keep_freed_memory
mode, where = sys.argv[1:]
if mode != "default":
    assert keep_freed_memory(arenas=1 if mode == "keep, one arena" else None)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = (48 if where == "main" else 96) << 20
def once():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
out = []
def rounds():
    once()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        once()
    out.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 5)
if where == "main":
    rounds()
else:
    t = threading.Thread(target=rounds)
    t.start()
    t.join()
print(out[0])
"""


def _faults_per_round(mode: str, where: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, where], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only (the function is a no-op elsewhere)")
@pytest.mark.parametrize(("where", "mode"), [("main", "keep"), ("thread", "keep, one arena")])
def test_freed_blocks_are_reused_without_page_faults(where, mode):
    # Without the settings every round maps a fresh block: ≈ 12 288 / 24 576 faults of
    # 4 KiB pages (fewer if transparent huge pages serve it, never near 0) — which is
    # also what this test sees if keep_freed_memory stops applying any one setting
    # (either threshold: the main thread; the arena count: the thread).
    assert _faults_per_round("default", where) >= 1000
    assert _faults_per_round(mode, where) < 50


def test_glibc_is_recognised_as_the_platform_says():
    assert allocator._glibc() is GLIBC


def test_settings_are_recorded_and_the_env_turns_them_off(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "0")
    monkeypatch.setattr(allocator, "_applied", {})
    assert allocator.keep_freed_memory() is False
    assert allocator.settings() == {}
    monkeypatch.delenv(allocator.ENV)
    assert allocator.keep_freed_memory(64 << 20) is GLIBC
    expected = {"M_MMAP_THRESHOLD": 64 << 20, "M_TRIM_THRESHOLD": 64 << 20} if GLIBC else {}
    assert allocator.settings() == expected
    allocator.keep_freed_memory()  # back to the default the sgjax command uses


@pytest.mark.parametrize("bad", [0, 1 << 31, 1.5e9, True, "1G"])
def test_bad_threshold_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="`threshold`"):
        allocator.keep_freed_memory(bad)


@pytest.mark.parametrize("bad", [0, -1, 1.0, True])
def test_bad_arena_count_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="`arenas`"):
        allocator.keep_freed_memory(arenas=bad)


def test_the_sgjax_command_applies_it_first(monkeypatch):
    # before the sub-command's module (and so JAX's backends) is loaded
    from sgjax.apps import cli

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("keep") or True)
    load, help_ = cli.COMMANDS["launch"]
    monkeypatch.setitem(cli.COMMANDS, "launch", (lambda: calls.append("load") or load(), help_))
    with pytest.raises(SystemExit):
        cli.main(["launch", "--no-such-flag"])
    assert calls == ["keep", "load"]
