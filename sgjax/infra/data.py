"""Offline datasets. Nothing here downloads anything, ever.

(Over 400 lines: the IDX reader with its checks of every header field, the generated
datasets and the registry; each part is small, and they share the Dataset type.)

A :class:`Dataset` holds float32 inputs (flattened to ``(n, in_dim)``) and int32 labels
in ``[0, num_classes)``, split into train and test. Sources:

- ``"digits"``: scikit-learn's bundled 8×8 digits (ships with scikit-learn).
- ``"mnist"``, ``"fashion_mnist"``: the IDX files (raw or ``.gz``) from a directory (see
  :func:`find_idx_dir` for where it is looked for). Pixels are scaled to ``[0, 1]``.
- ``"linear<k>"``, ``"noisy<k>"``, ``"random<k>"`` (e.g. ``"noisy100"``): the artificial
  sets of the paper's Table 2 (Section 4, Supplementary C; ``paper.md`` §2.4), see
  :func:`artificial`.
- ``"grid_noisy"``, ``"grid_random"``: the 2-D grid of the paper's Fig. 2 (``paper.md``
  §3.1), see :func:`grid`.

For the generated sets the paper measures the *training* loss, so ``x_test``/``y_test``
are the training arrays themselves (not a held-out sample).

Example:
    >>> ds = load("digits")
    >>> ds.x_train.shape[1], ds.num_classes
    (64, 10)
    >>> ds = load("noisy2", seed=1)
    >>> ds.x_train.shape, ds.num_classes, ds.x_test is ds.x_train
    ((100, 2), 2, True)
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
    """A classification dataset split into train and test parts."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled digits (1797 images, 8×8, 10 classes), stratified split.

    Pixels are scaled from 0..16 to [0, 1]. The file is read from scikit-learn's package
    data without importing scikit-learn (its import costs ~0.8 s of CPU, more than the
    rest of a short run's start); where that file is not found, through
    ``sklearn.datasets.load_digits``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}")
    x, y = _digits_arrays()
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in range(10):  # stratified: the same test fraction of every class
        idx = np.flatnonzero(y == c)
        test_idx.append(rng.permutation(idx)[: round(test_fraction * len(idx))])
    test = np.zeros(len(y), bool)
    test[np.concatenate(test_idx)] = True
    return Dataset("digits", x[~test], y[~test], x[test], y[test], 10)


def _digits_file() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz`` (found without importing it), or None."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' ``(1797, 64)`` pixels (0..16, float64) and ``(1797,)`` int32 labels."""
    path = _digits_file()
    if path is not None:  # the file load_digits reads: 64 pixels, then the label
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        labels = table[:, -1]
        # the layout load_digits reads (a file of another layout: read through scikit-learn)
        if table.shape == (1797, 65) and set(np.unique(labels)) == set(range(10)):
            return table[:, :-1], labels.astype(np.int32)
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"the digits dataset needs scikit-learn ({e}); install the apps extra: "
            "pip install 'sgjax[apps]'",
            name=e.name,
        ) from e
    bunch = load_digits()
    return bunch.data, bunch.target.astype(np.int32)


# --------------------------------------------------------------------------- IDX files

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


# Per dataset: sub-directory names tried under SGJAX_DATA_DIR and ../shared/data, and
# where a user can get the files (we never fetch them ourselves).
class _IdxSet(NamedTuple):
    subdirs: tuple[str, ...]
    env_itself: bool
    source: str


_IDX_SETS = {
    "mnist": _IdxSet(
        subdirs=("mnist", "MNIST"),
        env_itself=True,
        source="http://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)",
    ),
    # Fashion-MNIST uses MNIST's file names, so SGJAX_DATA_DIR itself is not tried: it
    # usually holds MNIST, and the two must not be confused.
    "fashion_mnist": _IdxSet(
        subdirs=("fashion_mnist", "fashion-mnist", "FashionMNIST"),
        env_itself=False,
        source="https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
    ),
}


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # raw first: it needs no decompression
        if (directory / name).is_file():
            return directory / name
    return None


def _has_idx(directory: Path) -> bool:
    return all(_idx_file(directory, f) is not None for f in IDX_FILES.values())


def _candidates(name: str) -> tuple[list[Path], bool]:
    """Directories to try for ``name`` when none is given, and whether the env var set them."""
    spec = _IDX_SETS[name]
    env = os.environ.get("SGJAX_DATA_DIR")
    if env:
        base = Path(env).expanduser()
        dirs = [base] if spec.env_itself else []
        return dirs + [base / s for s in spec.subdirs], True
    # A shared/data/<name> in the current directory or any directory above it (so a
    # checkout's ../shared is found from the checkout and from any sub-directory of it),
    # then the same above the installed package (an editable install's checkout, or the
    # project holding the virtual environment of a non-editable one).
    dirs = []
    for start in (Path.cwd().resolve(), _PACKAGE_DIR):
        for a in (start, *start.parents):
            for s in spec.subdirs:
                d = a / "shared" / "data" / s
                if d not in dirs:
                    dirs.append(d)
    return dirs, False


#: where this package is installed (a checkout for an editable install, site-packages else)
_PACKAGE_DIR = Path(__file__).resolve().parent


class DataNotFoundError(FileNotFoundError):
    """A dataset's files were not found. ``str(err)`` words the fix for Python callers
    (``data_dir=``), :meth:`cli_message` for the command line (``--data-dir DIR``)."""

    def __init__(self, python: str, cli: str):
        super().__init__(python)
        self._cli = cli

    def cli_message(self) -> str:
        return self._cli


def _how_to(name: str, arg: str = "`data_dir=`") -> str:
    files = ", ".join(IDX_FILES.values())
    return (
        f"Provide the {name} IDX files ({files}; raw or .gz) by passing {arg} "
        f"or by setting SGJAX_DATA_DIR to "
        + ("their directory or " if _IDX_SETS[name].env_itself else "")
        + f"a directory with a sub-directory {' / '.join(_IDX_SETS[name].subdirs)} "
        f"holding them. sgjax never downloads "
        f"data; the files are available from {_IDX_SETS[name].source}."
    )


def find_idx_dir(name: str = "mnist", data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the four IDX files of ``name`` (``"mnist"``/``"fashion_mnist"``).

    Looked for in this order, stopping at the first source that is set:

    1. ``data_dir`` if given (the files directly in it, or in a sub-directory named after
       the dataset, e.g. ``data_dir/fashion_mnist``);
    2. the ``SGJAX_DATA_DIR`` environment variable (for MNIST the directory itself or its
       ``mnist`` sub-directory; for Fashion-MNIST only its ``fashion_mnist`` /
       ``fashion-mnist`` sub-directory, because the two share file names);
    3. ``shared/data/<name>`` in the current directory or any directory above it (a
       checkout's ``../shared``, from the checkout or any sub-directory of it), then above
       the installed package — the same for editable and non-editable installs.

    Raises:
        DataNotFoundError: a :class:`FileNotFoundError` saying where it looked and how to
            provide the files (``data_dir=``; its ``cli_message()`` says ``--data-dir``).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     try:
        ...         find_idx_dir("mnist", d)
        ...     except FileNotFoundError as e:
        ...         print("never downloads" in str(e))
        True
    """
    if name not in _IDX_SETS:
        raise ValueError(f"`name` must be one of {sorted(_IDX_SETS)}, got {name!r}")
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        looked = [base] + [base / s for s in _IDX_SETS[name].subdirs]
        how, how_cli, from_env = "the `data_dir` argument", "--data-dir", False
    else:
        looked, from_env = _candidates(name)
        how = "SGJAX_DATA_DIR" if from_env else "the default locations (SGJAX_DATA_DIR unset)"
        how_cli = how
    for d in looked:
        if _has_idx(d):
            return d
    detail = []
    for d in looked:
        if d.is_dir():
            missing = [f for f in IDX_FILES.values() if _idx_file(d, f) is None]
            detail.append(f"{d} (missing {', '.join(missing)})")
        elif data_dir is not None or from_env:
            detail.append(f"{d} (no such directory)")
    if data_dir is None and not from_env:  # the walk up: one line, not every ancestor
        sub = "|".join(_IDX_SETS[name].subdirs)
        detail.append(
            f"shared/data/{{{sub}}} in {Path.cwd().resolve()} and every directory above it, "
            f"and above {_PACKAGE_DIR}"
        )
    looked_in = f"looked in: {'; '.join(detail)}. "
    raise DataNotFoundError(
        f"{name} IDX files not found via {how}; {looked_in}" + _how_to(name),
        f"{name} IDX files not found via {how_cli}; {looked_in}" + _how_to(name, "--data-dir DIR"),
    )


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(
            f"{path}: cannot read the file ({type(e).__name__}: {e}); it is corrupt or "
            "truncated. Replace it with an intact copy."
        ) from e


def read_idx(path: str | os.PathLike, *, magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (raw or ``.gz``) into a uint8 array.

    Validates the magic number (``magic`` if given: ``0x803`` images, ``0x801`` labels),
    the dimension count, and that the payload has exactly the bytes the header promises.
    The decompressed array of the last 8 files read is cached in memory (keyed by path,
    size and mtime) and returned read-only; nothing is written to disk.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is corrupt: wrong magic, truncated, or trailing bytes.

    Example:
        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = pathlib.Path(d) / "labels"
        ...     _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 2]))
        ...     read_idx(p, magic=LABELS_MAGIC).tolist()
        [7, 1, 2]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    st = path.stat()
    return _parse_idx(str(path), str(path.resolve()), st.st_size, st.st_mtime_ns, magic)


# Decompressed uint8 arrays, keyed by the file's identity (path, size, mtime) and the magic
# asked for: a bounded cache (the last 8 files) in memory only, never on disk.
@functools.lru_cache(maxsize=8)
def _parse_idx(
    shown: str, resolved: str, size: int, mtime_ns: int, magic: int | None
) -> np.ndarray:
    del resolved, size, mtime_ns  # the cache key: a changed file is read again
    path = Path(shown)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (truncated)")
    found = int.from_bytes(raw[:4], "big")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if magic is not None and found != magic:
        raise ValueError(
            f"{path}: IDX magic number is {found:#010x}, expected {magic:#010x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'}); not the right IDX file, "
            "or corrupt"
        )
    if zero != 0 or dtype_code != 0x08 or ndim == 0:
        raise ValueError(
            f"{path}: IDX magic number {found:#010x} is not an unsigned-byte IDX header "
            "(expected 0x000008NN); not an IDX file, or corrupt"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated inside the IDX header ({len(raw)} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise ValueError(
            f"{path}: header says shape {dims} ({expected} bytes) but the file holds {got} "
            f"data bytes ({what}). Replace it with an intact copy."
        )
    arr = np.frombuffer(raw, np.uint8, offset=header).reshape(dims)
    arr.setflags(write=False)  # the cached copy must not be changed by a caller
    return arr


def _load_split(
    directory: Path, split: str, image_shape: tuple[int, int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    img_path = _idx_file(directory, IDX_FILES[f"{split}_images"])
    lab_path = _idx_file(directory, IDX_FILES[f"{split}_labels"])
    assert img_path is not None and lab_path is not None  # find_idx_dir checked
    images = read_idx(img_path, magic=IMAGES_MAGIC)
    labels = read_idx(lab_path, magic=LABELS_MAGIC)
    if images.shape[1:] != image_shape:
        raise ValueError(f"{img_path}: images of shape {images.shape[1:]}, expected {image_shape}")
    if len(images) != len(labels):
        raise ValueError(
            f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} "
            "labels; the files do not belong together (or one is corrupt)"
        )
    if labels.size and labels.max() >= num_classes:
        raise ValueError(
            f"{lab_path}: labels must lie in [0, {num_classes}), found {int(labels.max())}"
        )
    return images, labels


def _subset(n: int | None, total: int, arg: str) -> int:
    if n is None:
        return total
    if not isinstance(n, int) or not 1 <= n <= total:
        raise ValueError(f"`{arg}` must be an int in 1..{total} or None, got {n!r}")
    return n


def idx_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    n_train: int | None = None,
    n_test: int | None = None,
) -> Dataset:
    """MNIST or Fashion-MNIST from IDX files: 28×28 images flattened to 784 floats in [0, 1].

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        data_dir: directory of the IDX files (default: see :func:`find_idx_dir`).
        n_train: keep only the first ``n_train`` training examples (default: all).
        n_test: keep only the first ``n_test`` test examples (default: all).

    Raises:
        FileNotFoundError: the files are not there (the message says where it looked).
        ValueError: a file is corrupt or the files do not belong together.

    Example:
        >>> try:
        ...     ds = idx_dataset("mnist", n_train=100, n_test=10)
        ... except FileNotFoundError:  # no MNIST here; the message says how to provide it
        ...     ds = None
        >>> ds is None or (ds.x_train.shape, ds.y_test.shape) == ((100, 784), (10,))
        True
    """
    directory = find_idx_dir(name, data_dir)
    xs, ys = [], []
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _load_split(directory, split, (28, 28), 10)
        k = _subset(n, len(images), f"n_{split}")
        xs.append((images[:k].reshape(k, -1) / np.float32(255.0)).astype(np.float32, copy=False))
        ys.append(labels[:k].astype(np.int32))
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], 10)


def mnist(data_dir: str | os.PathLike | None = None, **kwargs) -> Dataset:
    """MNIST (60,000 train / 10,000 test, 10 classes); see :func:`idx_dataset`."""
    return idx_dataset("mnist", data_dir, **kwargs)


def fashion_mnist(data_dir: str | os.PathLike | None = None, **kwargs) -> Dataset:
    """Fashion-MNIST (same format and sizes as MNIST); see :func:`idx_dataset`."""
    return idx_dataset("fashion_mnist", data_dir, **kwargs)


# --------------------------------------------------------------------- generated sets

ARTIFICIAL_KINDS = ("linear", "noisy", "random")


def artificial(
    kind: str, k: int, *, n: int | None = None, seed: int = 0, noise: float = 0.1
) -> Dataset:
    """The artificial binary sets of the paper's Table 2 (Supplementary C; paper.md §2.4).

    ``x ~ N(0, I_k)``; ``n`` defaults to 100 points for ``k = 2`` and 1000 otherwise
    (the paper's sizes for k = 2 and k = 100). Labels in {0, 1}:

    - ``"linear"``: ``y = [x·w > 0]``, ``w ~ N(0, I_k)`` (a random hyperplane through the
      origin);
    - ``"noisy"``: the linear labels with exactly ``round(noise·n)`` of them swapped;
    - ``"random"``: independent fair coin flips.

    ``x_test``/``y_test`` are the training arrays (the paper reports training loss).

    Example:
        >>> ds = artificial("linear", 2, seed=0)
        >>> ds.name, ds.x_train.shape, sorted(set(ds.y_train.tolist()))
        ('linear2', (100, 2), [0, 1])
    """
    if kind not in ARTIFICIAL_KINDS:
        raise ValueError(f"`kind` must be one of {ARTIFICIAL_KINDS}, got {kind!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an int ≥ 1, got {k!r}")
    n = (100 if k == 2 else 1000) if n is None else n
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"`n` must be an int ≥ 2, got {n!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"`noise` must be in [0, 1], got {noise!r}")
    rng = np.random.default_rng([seed, k, n])
    x = rng.standard_normal((n, k))
    w = rng.standard_normal(k)
    y = (x @ w > 0).astype(np.int32)
    if kind == "noisy":
        flip = rng.choice(n, size=round(noise * n), replace=False)
        y[flip] = 1 - y[flip]
    elif kind == "random":
        y = rng.integers(0, 2, n).astype(np.int32)
    x = x.astype(np.float32)
    return Dataset(f"{kind}{k}", x, y, x, y, 2)


def grid(kind: str = "noisy", *, size: int = 10, seed: int = 0, noise: float = 0.1) -> Dataset:
    """The 2-D grid of the paper's Fig. 2 (Section 4; paper.md §3.1).

    ``size × size`` points evenly spaced on ``[-1, 1]²``. Labels in {0, 1}:

    - ``"noisy"`` ("noisy linear"): a random hyperplane through the origin labels the
      points, then a random ``round(noise·n)`` of them (10%) get fresh random labels (a
      coin flip, so about half of those change), as in the paper's description;
    - ``"random"``: every label is a coin flip.

    ``x_test``/``y_test`` are the training arrays (the figure shows the training points).

    Example:
        >>> ds = grid("random", size=4)
        >>> ds.name, ds.x_train.shape
        ('grid_random', (16, 2))
    """
    if kind not in ("noisy", "random"):
        raise ValueError(f"`kind` must be 'noisy' or 'random', got {kind!r}")
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"`size` must be an int ≥ 2, got {size!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"`noise` must be in [0, 1], got {noise!r}")
    rng = np.random.default_rng([seed, size, 2])
    t = np.linspace(-1.0, 1.0, size)
    x = np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    n = len(x)
    if kind == "noisy":
        w = rng.standard_normal(2)
        y = (x @ w > 0).astype(np.int32)
        idx = rng.choice(n, size=round(noise * n), replace=False)
        y[idx] = rng.integers(0, 2, len(idx))
    else:
        y = rng.integers(0, 2, n).astype(np.int32)
    x = x.astype(np.float32)
    return Dataset(f"grid_{kind}", x, y, x, y, 2)


# -------------------------------------------------------------------------- registry

#: The registry of datasets: name -> loader. Adding one is one entry here.
LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "mnist": mnist,
    "fashion_mnist": fashion_mnist,
    "grid_noisy": lambda **kw: grid("noisy", **kw),
    "grid_random": lambda **kw: grid("random", **kw),
}
#: datasets read from IDX files: the only ones that take ``data_dir`` and ``n_train``.
FILE_DATASETS = ("mnist", "fashion_mnist")
_ARTIFICIAL_RE = re.compile(r"(linear|noisy|random)(\d+)")


def names() -> Sequence[str]:
    """Dataset names :func:`load` accepts (``<kind><k>`` stands for any k ≥ 1)."""
    return [*sorted(LOADERS), "linear<k>", "noisy<k>", "random<k>"]


def load(name: str, **kwargs) -> Dataset:
    """Load a dataset by name: see :func:`names`; ``kwargs`` go to its loader.

    Example:
        >>> load("random100", seed=3).x_train.shape
        (1000, 100)
    """
    key = name.replace("-", "_").lower() if isinstance(name, str) else name
    if key in LOADERS:
        return LOADERS[key](**kwargs)
    m = _ARTIFICIAL_RE.fullmatch(key) if isinstance(key, str) else None
    if m:
        return artificial(m.group(1), int(m.group(2)), **kwargs)
    raise ValueError(f"unknown dataset {name!r}; expected one of {names()}")
