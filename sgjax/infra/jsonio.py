"""Strict JSON for every file sgjax writes, and output paths checked before the work.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no strict JSON reader
accepts. Everything sgjax writes goes through :func:`dumps` / :func:`write` instead:

* numpy and JAX arrays become lists, numpy scalars Python numbers, tuples lists,
  paths strings;
* a non-finite float (NaN, +inf, −inf) is written as ``null`` **and flagged**: the
  top-level object gets a key ``"nonfinite_values"`` mapping the path of each such value
  (``"history[3].loss"``) to what it was (``"nan"``, ``"inf"`` or ``"-inf"``). A file
  without that key held only finite numbers. When the top level is a list, each element
  that is an object carries its own flag key for its own values.
* the text is produced with ``allow_nan=False``, so a bare ``NaN`` can never slip out.

:func:`check_writable` validates an output path before any long work (a directory where a
file is wanted, a file where a directory is wanted, a read-only or full place), so that a
bad ``--json`` / ``--out`` is refused in the first second, not after training.
:func:`write` replaces the file atomically (temporary file + rename); :func:`write_or_keep`
is what the commands use at the end of a run: if writing still fails, the results are
written to a file in the system's temporary directory and the error says where.

Example:
    >>> import math
    >>> print(dumps({"loss": math.nan, "acc": [0.5, math.inf]}, indent=None))
    {"loss": null, "acc": [0.5, null], "nonfinite_values": {"loss": "nan", "acc[1]": "inf"}}
    >>> loads_strict('{"a": NaN}')
    Traceback (most recent call last):
    ...
    ValueError: not strict JSON: the constant NaN is not allowed
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

#: the key that lists the non-finite values written as null
FLAG = "nonfinite_values"


class OutputPathError(ValueError):
    """An output path that cannot be written (raised before any work is done)."""


def _describe(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _convert(v: Any, path: str, bad: dict[str, str]) -> Any:
    import numpy as np

    if isinstance(v, dict):
        return {str(k): _convert(x, f"{path}.{k}" if path else str(k), bad) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_convert(x, f"{path}[{i}]", bad) for i, x in enumerate(v)]
    if isinstance(v, np.ndarray) or type(v).__module__.startswith("jax"):
        return _convert(np.asarray(v).tolist(), path, bad)
    if isinstance(v, np.generic):
        return _convert(v.item(), path, bad)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, float) and not math.isfinite(v):
        bad[path or "(value)"] = _describe(v)
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise TypeError(f"cannot write {type(v).__name__} at {path or 'the top level'} as JSON")


def strict(obj: Any) -> Any:
    """``obj`` as plain JSON types, non-finite floats as ``None`` and flagged (see above).

    Example:
        >>> import numpy as np
        >>> strict({"w": np.array([1.0, np.nan]), "n": np.int64(3)})
        {'w': [1.0, None], 'n': 3, 'nonfinite_values': {'w[1]': 'nan'}}
    """
    if isinstance(obj, list | tuple):
        return [strict(x) if isinstance(x, dict) else _strict_leaf(x, i) for i, x in enumerate(obj)]
    bad: dict[str, str] = {}
    out = _convert(obj, "", bad)
    if bad:
        if not isinstance(out, dict):
            raise ValueError(f"non-finite value {bad} outside a JSON object: nowhere to flag it")
        if FLAG in out:
            raise ValueError(f"the key {FLAG!r} is reserved for the non-finite flag")
        out[FLAG] = bad
    return out


def _strict_leaf(x: Any, i: int) -> Any:
    bad: dict[str, str] = {}
    out = _convert(x, f"[{i}]", bad)
    if bad:
        raise ValueError(f"non-finite value {bad} outside a JSON object: nowhere to flag it")
    return out


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see the module docstring)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False, ensure_ascii=False)


def loads_strict(text: str) -> Any:
    """Parse JSON, refusing ``NaN`` / ``Infinity`` (what a strict reader does).

    Example:
        >>> loads_strict('{"a": null}')
        {'a': None}
    """

    def refuse(name: str) -> Any:
        raise ValueError(f"not strict JSON: the constant {name} is not allowed")

    return json.loads(text, parse_constant=refuse)


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, *, name: str, directory: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written; returns it as an absolute Path.

    ``directory=False``: ``path`` will be a file (it must not be a directory, and no
    ancestor may be a file). ``directory=True``: ``path`` will be a directory (it must not
    be a file). In both cases a probe file is written and removed in the nearest existing
    directory, which catches read-only places and a full disk. Nothing else is created.

    Raises:
        OutputPathError: naming the option ``name``, the path and what is wrong.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     check_writable(d, name="--json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        sgjax.infra.jsonio.OutputPathError: --json: ... is a directory; expected a file path
    """
    p = Path(path).expanduser().absolute()
    if p.exists():
        if directory and not p.is_dir():
            raise OutputPathError(f"{name}: {p} is a file; expected a directory")
        if not directory and p.is_dir():
            raise OutputPathError(f"{name}: {p} is a directory; expected a file path")
    base = _nearest_existing(p if directory else p.parent)
    if not base.is_dir():
        raise OutputPathError(f"{name}: cannot create {p}: {base} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sgjax-write-check-", dir=base)
        try:
            os.write(fd, b"{}\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
        if p.exists() and not directory and not os.access(p, os.W_OK):
            raise PermissionError(f"{p} is read-only")
    except OSError as e:
        raise OutputPathError(f"{name}: cannot write {p}: {e.strerror or e}") from None
    return p


def write(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically (temporary file, then rename).

    Creates missing parent directories. Returns the path.
    """
    p = Path(path)
    text = dumps(obj, indent=indent) + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


class OutputKeptError(OSError):
    """Writing the results failed; they were kept elsewhere (``.kept_at``)."""

    def __init__(self, message: str, kept_at: Path | None):
        super().__init__(message)
        self.kept_at = kept_at


def write_or_keep(path: str | os.PathLike, obj: Any, *, name: str) -> Path:
    """:func:`write`, and if that fails, keep the results in the temporary directory.

    Raises:
        OutputKeptError: the write to ``path`` failed; the message names the error and the
            file the results were written to instead (or says that this failed too).

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     blocker = pathlib.Path(d, "f"); _ = blocker.write_text("")
        ...     try:
        ...         write_or_keep(blocker / "r.json", {"a": 1}, name="--json")
        ...     except OutputKeptError as e:
        ...         e.kept_at.read_text() == '{\\n  "a": 1\\n}\\n'
        True
    """
    try:
        return write(path, obj)
    except OSError as e:
        reason = e.strerror or str(e)
        stem = Path(path).stem or "results"
        try:
            fd, kept = tempfile.mkstemp(prefix=f"sgjax-{stem}-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dumps(obj) + "\n")
        except OSError as e2:
            raise OutputKeptError(
                f"{name}: could not write {path} ({reason}), nor keep the results in the "
                f"temporary directory ({e2.strerror or e2}); they are lost",
                None,
            ) from None
        raise OutputKeptError(
            f"{name}: could not write {path} ({reason}); the results were kept in {kept}",
            Path(kept),
        ) from None
