"""Tasks of the DNI paper's RNN section (§3.1): Copy, Repeat Copy, character-level LM.

Copy and Repeat Copy (Graves et al. 2014) are generated (no data files); batches are
time-major ``(x (L,B,I), y (L,B,O), m (L,B))`` for a ``loss="bits"`` model.

* **Copy(N)**: N random ``bits``-wide binary vectors, then a delimiter step, then N blank
  steps in which the network must output the N vectors (L = 2N + 1). Input width
  ``bits + 1`` (the delimiter channel), output width ``bits``.
* **Repeat Copy(N, R)**: N vectors, then a delimiter step whose extra channel holds R/10,
  then N·R steps of output (the vectors R times) and one step with the end flag
  (L = N + 1 + N·R + 1). Input width ``bits + 2``, output width ``bits + 1``.

The loss is masked to the output phase; the task error is the summed per-bit
cross-entropy per output step in **bits**. The curriculum (:class:`Curriculum`) raises
the difficulty when the mean error over the last ``patience`` batches falls below the
threshold (0.15 bits per output step, our reading of the DNI paper's criterion); Repeat
Copy raises N and R alternately. The score is the longest output length solved
(N for Copy, N·R for Repeat Copy).

Tiny Shakespeare (:func:`load_tinyshakespeare`): 65 characters, the first 90% for
training and the last 10% for validation; nothing is downloaded.

Example:
    >>> import numpy as np
    >>> x, y, m = copy_batch(np.random.default_rng(0), n=3, batch=2, bits=4)
    >>> x.shape, y.shape, m.shape, int(m[:, 0].sum())
    ((7, 2, 5), (7, 2, 4), (7, 2), 3)
"""

from __future__ import annotations

import math
import os
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

# ------------------------------------------------------------------------- copy tasks


def copy_batch(
    rng: np.random.Generator, n: int, batch: int, bits: int = 8, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of Copy(n): ``x (2n+1, B, bits+1)``, ``y (2n+1, B, bits)``, ``m``."""
    if n < 1:
        raise ValueError(f"`n` must be ≥ 1, got {n}")
    L = 2 * n + 1
    seq = rng.integers(0, 2, size=(n, batch, bits)).astype(dtype)
    x = np.zeros((L, batch, bits + 1), dtype)
    x[:n, :, :bits] = seq
    x[n, :, bits] = 1.0
    y = np.zeros((L, batch, bits), dtype)
    y[n + 1 :] = seq
    m = np.zeros((L, batch), dtype)
    m[n + 1 :] = 1.0
    return x, y, m


def repeat_copy_batch(
    rng: np.random.Generator, n: int, repeats: int, batch: int, bits: int = 8, dtype=np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of Repeat Copy(n, R): ``x (n+nR+2, B, bits+2)``, ``y (…, bits+1)``, ``m``.

    Example:
        >>> x, y, m = repeat_copy_batch(np.random.default_rng(0), 2, 3, batch=1, bits=2)
        >>> x.shape, int(m.sum()), float(y[-1, 0, -1])  # 6 copies + the end flag
        ((10, 1, 4), 7, 1.0)
    """
    if n < 1 or repeats < 1:
        raise ValueError(f"`n` and `repeats` must be ≥ 1, got n={n}, repeats={repeats}")
    L = n + 1 + n * repeats + 1
    seq = rng.integers(0, 2, size=(n, batch, bits)).astype(dtype)
    x = np.zeros((L, batch, bits + 2), dtype)
    x[:n, :, :bits] = seq
    x[n, :, bits] = 1.0
    x[n, :, bits + 1] = repeats / 10.0
    y = np.zeros((L, batch, bits + 1), dtype)
    y[n + 1 : n + 1 + n * repeats, :, :bits] = np.tile(seq, (repeats, 1, 1))
    y[-1, :, bits] = 1.0
    m = np.zeros((L, batch), dtype)
    m[n + 1 :] = 1.0
    return x, y, m


BITS_PER_NAT = 1.0 / math.log(2.0)


@dataclass
class Curriculum:
    """Raise the task length when the recent mean error < ``threshold`` (bits/step).

    ``task`` is ``"copy"`` (level N) or ``"repeat_copy"`` (N and R raised alternately,
    N first). ``solved`` is the longest output length solved so far (0: none).

    Example:
        >>> c = Curriculum("copy", threshold=0.15, patience=2)
        >>> [c.update(0.1) for _ in range(2)]
        [False, True]
        >>> c.n, c.solved
        (2, 1)
    """

    task: str = "copy"
    threshold: float = 0.15
    patience: int = 10
    n: int = 1
    repeats: int = 1
    solved: int = 0
    history: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.task not in ("copy", "repeat_copy"):
            raise ValueError(f"`task` must be 'copy' or 'repeat_copy', got {self.task!r}")
        if not self.threshold > 0 or self.patience < 1:
            raise ValueError("`threshold` must be > 0 and `patience` ≥ 1")

    @property
    def length(self) -> int:
        return self.n if self.task == "copy" else self.n * self.repeats

    def update(self, error_bits: float) -> bool:
        """Record one batch's error; raise the level if solved. Returns whether it rose."""
        self.history.append(float(error_bits))
        if len(self.history) > self.patience:
            self.history.popleft()
        if len(self.history) < self.patience or np.mean(self.history) >= self.threshold:
            return False
        self.solved = max(self.solved, self.length)
        if self.task == "copy" or self.n <= self.repeats:
            self.n += 1
        else:
            self.repeats += 1
        self.history.clear()
        return True

    def batch(self, rng: np.random.Generator, batch: int, bits: int):
        if self.task == "copy":
            return copy_batch(rng, self.n, batch, bits)
        return repeat_copy_batch(rng, self.n, self.repeats, batch, bits)


def pad(length: int, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Zero-pad time-major arrays at the end to ``length`` steps (a zero mask: no loss).

    Example:
        >>> [a.shape for a in pad(5, np.ones((3, 2, 4)), np.ones((3, 2)))]
        [(5, 2, 4), (5, 2)]
    """
    return tuple(
        np.concatenate([a, np.zeros((length - a.shape[0], *a.shape[1:]), a.dtype)])
        if a.shape[0] < length
        else a
        for a in arrays
    )


def task_dims(task: str, bits: int) -> tuple[int, int]:
    """``(in_dim, out_dim)`` of a copy task."""
    return (bits + 1, bits) if task == "copy" else (bits + 2, bits + 1)


# ---------------------------------------------------------------- Tiny Shakespeare


class CharData(NamedTuple):
    """Character ids of the training (first 90%) and validation (last 10%) text, and the
    encoding the file was read with (``"ascii"``, or ``"utf-8"`` when it was not ASCII)."""

    train: np.ndarray
    valid: np.ndarray
    vocab: str
    path: Path
    encoding: str = "ascii"


MIN_SPLIT_CHARS = 2
"""Each split must hold at least this many characters (an input and its next character)."""


def min_text_chars(split: float = 0.9) -> int:
    """The shortest text :func:`load_tinyshakespeare` accepts for ``split``: both the
    training and the validation part hold :data:`MIN_SPLIT_CHARS` characters.

    Example:
        >>> min_text_chars(0.9), min_text_chars(0.5)
        (11, 4)
    """
    n = 2 * MIN_SPLIT_CHARS
    while int(n * split) < MIN_SPLIT_CHARS or n - int(n * split) < MIN_SPLIT_CHARS:
        n += 1
    return n


def _ts_candidates(data_dir) -> tuple[list[Path], str]:
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        return [base, base / "tinyshakespeare"], "the `data_dir` argument"
    env = os.environ.get("SGJAX_DATA_DIR")
    if env:
        base = Path(env).expanduser()
        return [base / "tinyshakespeare", base], "SGJAX_DATA_DIR"
    dirs: list[Path] = []
    for r in (Path(__file__).resolve().parents[2], Path.cwd().resolve()):
        for a in r.parents:  # ../shared next to the checkout, or next to a folder above it
            d = a / "shared" / "data" / "tinyshakespeare"
            if d not in dirs:
                dirs.append(d)
    return dirs, "the default locations (SGJAX_DATA_DIR unset)"


def find_tinyshakespeare(data_dir: str | os.PathLike | None = None) -> Path:
    """The path of Tiny Shakespeare's ``input.txt``.

    Looked for in ``data_dir`` (or its ``tinyshakespeare`` sub-directory) if given, else
    in ``$SGJAX_DATA_DIR/tinyshakespeare`` or ``$SGJAX_DATA_DIR``, else in
    ``shared/data/tinyshakespeare`` next to the repository root, the current directory or a
    folder above them (``../shared`` of a checkout, ``../../shared`` of a worktree).

    Raises:
        FileNotFoundError: saying where it looked and how to provide the file.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     try:
        ...         find_tinyshakespeare(d)
        ...     except FileNotFoundError as e:
        ...         print("never downloads" in str(e))
        True
    """
    dirs, how = _ts_candidates(data_dir)
    for d in dirs:
        if (d / "input.txt").is_file():
            return d / "input.txt"
    raise FileNotFoundError(
        f"Tiny Shakespeare input.txt not found via {how}; looked in: "
        + "; ".join(str(d / "input.txt") for d in dirs)
        + ". Provide it by passing `data_dir=` (a directory holding input.txt, or its "
        "`tinyshakespeare` sub-directory) or by setting SGJAX_DATA_DIR. sgjax never "
        "downloads data; the file (1,115,394 bytes, md5 6fb458f1232090904fb40fe944165e91) "
        "is the char-rnn project's tinyshakespeare/input.txt (A. Karpathy, 2015)."
    )


def load_tinyshakespeare(data_dir: str | os.PathLike | None = None, split: float = 0.9) -> CharData:
    """Tiny Shakespeare as character ids, split by position: first ``split`` for training.

    The vocabulary is the sorted set of characters of the whole file (65). A file that is
    not ASCII is read as UTF-8 (with a ``UserWarning`` naming the file, the byte offset
    of its first non-ASCII character and the vocabulary size) and ``encoding`` says so.

    Raises:
        ValueError: the file is not valid UTF-8 (naming the file and the byte offset), or
            it is shorter than :func:`min_text_chars` characters (naming the file, its
            length and the minimum).

    Example:
        >>> d = load_tinyshakespeare()  # doctest: +SKIP
        >>> len(d.vocab), len(d.train) + len(d.valid)  # doctest: +SKIP
        (65, 1115394)
    """
    if not 0.0 < split < 1.0:
        raise ValueError(f"`split` must be in (0, 1), got {split!r}")
    path = find_tinyshakespeare(data_dir)
    raw = path.read_bytes()
    codes = np.frombuffer(raw, np.uint8)
    encoding = "ascii"
    if codes.size and int(codes.max()) >= 128:
        first = int(np.argmax(codes >= 128))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path}: not ASCII and not valid UTF-8: byte {raw[e.start]:#04x} at byte offset "
                f"{e.start} ({e.reason}); the character LM reads ASCII or UTF-8 text"
            ) from None
        encoding = "utf-8"
        codes = np.array([ord(ch) for ch in text], np.int64)
    n_min = min_text_chars(split)
    if codes.size < n_min:
        raise ValueError(
            f"{path}: {codes.size} characters; a character LM needs at least {n_min} (with "
            f"`split`={split}, {MIN_SPLIT_CHARS} characters in each of the training and the "
            "validation part)"
        )
    uniq, ids = np.unique(codes, return_inverse=True)
    vocab = "".join(chr(int(c)) for c in uniq)
    if encoding != "ascii":
        warnings.warn(
            f"{path}: not ASCII (first non-ASCII byte at offset {first}); read as UTF-8: "
            f"{codes.size} characters, a vocabulary of {len(vocab)}",
            UserWarning,
            stacklevel=2,
        )
    ids = ids.astype(np.int32)
    cut = int(len(ids) * split)
    return CharData(ids[:cut], ids[cut:], vocab, path, encoding)


def streams(ids: np.ndarray, batch: int) -> np.ndarray:
    """Split ``ids`` into ``batch`` contiguous streams, time-major ``(len // batch, batch)``.

    Example:
        >>> streams(np.arange(10), 3)[:, 1].tolist()
        [3, 4, 5]
    """
    if batch < 1 or len(ids) < 2 * batch:
        raise ValueError(f"`batch` must be in 1..{len(ids) // 2} for {len(ids)} ids, got {batch}")
    n = len(ids) // batch
    return np.ascontiguousarray(ids[: n * batch].reshape(batch, n).T)


def one_hot(ids: np.ndarray, width: int, dtype=np.float32) -> np.ndarray:
    return np.eye(width, dtype=dtype)[ids]
