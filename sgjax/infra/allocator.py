"""Keep freed memory for reuse: the C allocator's settings for a training process.

XLA:CPU takes every call's output and scratch buffers from ``malloc`` and frees them when
the call is done. glibc's ``malloc`` serves a request of ``M_MMAP_THRESHOLD`` bytes or
more (128 KiB at start, raised adaptively as such blocks are freed, but never above
32 MiB) with a fresh ``mmap`` that ``free`` returns to the kernel, and returns the top
of the heap above ``M_TRIM_THRESHOLD``. Either way the next call's buffers are new pages:
the kernel faults in and zeroes every 4 KiB page again, on every call. Where that
happens depends on the sizes and the order of earlier allocations (so on the program,
and even on the process): measured on the 2-core VM (``docs/performance.md``),

* a pipeline stage of four 1024-wide layers (batch 128, Adam, its state donated): one
  42 MB scratch buffer above the 32 MiB cap, 10 282 page faults per call, 39–43 ms per
  call instead of 20.7–21.7 ms;
* the bench's SG step (784-256-256-256-10, batch 256): 120–330 page faults per step
  (5–8 % of its time, measured over fresh processes).

A second way to the same faults: XLA's worker threads allocate from glibc's per-thread
arenas, whose heaps hold at most 64 MiB each and are shrunk when their top is free; a
larger block is mapped whatever the threshold says (the SG pipeline on 2 processes at
width 2048: 20 000–30 000 page faults per tick, 99–104 ms per tick instead of 57).

:func:`keep_freed_memory` sets both thresholds to 1 GiB with ``mallopt``, so freed
blocks stay in the process's heap and the next call reuses them, and with ``arenas=1``
also makes every thread allocate from the main heap (``M_ARENA_MAX``): 0 page faults per
call in all three cases (figures in ``docs/performance.md`` and ``docs/pipeline.md``).
The price: a process's resident memory does not shrink after a peak (what a training
process wants); and one arena means one lock for every thread — measured on 2 unpinned
cores it made the bench's steps 14–23 % slower, so it is only for a process pinned to
one core, where XLA's threads cannot run at once anyway. The ``sgjax`` command calls
``keep_freed_memory()`` first thing; every process of a :func:`sgjax.pipeline.launch`
job calls it too, with ``arenas=1`` when it is pinned to one core. A user's own script
should call it before JAX starts its threads (a thread keeps the arena it first
allocated from). ``SGJAX_KEEP_FREED_MEMORY=0`` in the environment turns it off (for a
comparison). It does nothing on a C library other than glibc (macOS, musl), where it
returns False.
"""

from __future__ import annotations

import ctypes
import os

ENV = "SGJAX_KEEP_FREED_MEMORY"
#: mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
_applied: dict[str, int] = {}


def keep_freed_memory(threshold: int = 1 << 30, *, arenas: int | None = None) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to ``threshold`` bytes
    (and ``M_ARENA_MAX`` to ``arenas`` unless None).

    Blocks below ``threshold`` are then taken from and returned to the process's heap,
    never mapped and unmapped per call (see the module's docstring for why, what it
    buys and when ``arenas=1`` is worth its lock). Safe to call more than once; it
    affects allocations made after the call (the arena count: by threads that had not
    allocated before it, so call it first thing).

    Returns:
        True if the settings were applied; False if the C library is not glibc or
        ``SGJAX_KEEP_FREED_MEMORY=0`` is set (nothing changed).

    Raises:
        ValueError: ``threshold`` not an int in 1 MiB..2 GiB − 1 (mallopt takes a C int),
            or ``arenas`` neither None nor a positive int.
        OSError: glibc refused a setting.

    Example (Linux with glibc):
        >>> if keep_freed_memory():
        ...     print(settings())
        {'M_MMAP_THRESHOLD': 1073741824, 'M_TRIM_THRESHOLD': 1073741824}
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"`threshold` must be an int (bytes), got {type(threshold).__name__}")
    if not (1 << 20) <= threshold <= (1 << 31) - 1:
        raise ValueError(f"`threshold` must be in 1 MiB..2 GiB − 1 bytes, got {threshold}")
    if arenas is not None and (
        isinstance(arenas, bool) or not isinstance(arenas, int) or arenas < 1
    ):
        raise ValueError(f"`arenas` must be None or an int ≥ 1, got {arenas!r}")
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    if not _glibc():
        return False
    libc = ctypes.CDLL(None)  # the process's own symbols: glibc's mallopt
    params = [
        ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, threshold),
        ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, threshold),
    ]
    if arenas is not None:
        params.append(("M_ARENA_MAX", M_ARENA_MAX, arenas))
    for name, param, value in params:
        if libc.mallopt(param, value) != 1:
            raise OSError(f"mallopt({name}, {value}) was refused by the C library")
        _applied[name] = value
    return True


def _glibc() -> bool:
    """Whether this process's C library is glibc (the only one with these settings)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr, or the name unknown here
        return False


def settings() -> dict[str, int]:
    """What :func:`keep_freed_memory` set in this process (empty if nothing): recorded
    next to speed figures, so a comparison says under which allocator settings it ran."""
    return dict(_applied)
