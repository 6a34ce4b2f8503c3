"""Strict JSON for the files sgjax writes.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no strict JSON reader
accepts. :func:`dumps` / :func:`write` instead:

* turn numpy and JAX arrays into lists, numpy scalars into Python numbers, tuples into
  lists, paths into strings;
* write a non-finite float (NaN, +inf, −inf) as ``null`` **and flag it**: the top-level
  object gets a key ``"nonfinite_values"`` mapping the path of each such value
  (``"history[3].loss"``) to what it was (``"nan"``, ``"inf"`` or ``"-inf"``). A file
  without that key held only finite numbers;
* produce the text with ``allow_nan=False``, so a bare ``NaN`` can never slip out.

(The same format as the writer of the "nothing silent" work, issue 12, written here for
the pipeline's outputs; at merge one module remains.)

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
from pathlib import Path
from typing import Any

#: the key that lists the non-finite values written as null
FLAG = "nonfinite_values"


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
        bad[path or "(value)"] = "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return None
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise TypeError(f"cannot write {type(v).__name__} at {path or 'the top level'} as JSON")


def strict(obj: Any) -> Any:
    """``obj`` as plain JSON types, non-finite floats as ``None`` and flagged.

    Example:
        >>> import numpy as np
        >>> strict({"w": np.array([1.0, np.nan]), "n": np.int64(3)})
        {'w': [1.0, None], 'n': 3, 'nonfinite_values': {'w[1]': 'nan'}}
    """
    bad: dict[str, str] = {}
    out = _convert(obj, "", bad)
    if bad:
        if not isinstance(out, dict):
            raise ValueError(
                f"non-finite values at {sorted(bad)} and no top-level object to flag them in"
            )
        out[FLAG] = bad
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


def write(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as strict JSON to ``path`` (parents created; replaced atomically)."""
    path = Path(path)
    text = dumps(obj, indent=indent) + "\n"  # fails before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
