"""Data: IDX loaders (real MNIST when present, hand-built tiny IDX files always), the
generated sets of the paper (Table 2's linear/noisy/random k, Fig. 2's grid)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from sgjax.infra import data

# The counts published with the shared copy (/work/shared/data/mnist/README.md).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------------- real MNIST


@pytest.mark.mnist
def test_mnist_counts_shapes_range(mnist_dir):
    ds = data.load("mnist", data_dir=mnist_dir)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.y_test.dtype == np.int32 and ds.num_classes == 10 and ds.in_dim == 784
    assert np.bincount(ds.y_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.y_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    for x in (ds.x_train, ds.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    # Pixels are k/255 exactly: every value times 255 is (close to) an integer.
    v = np.unique(ds.x_train[:100]) * 255
    np.testing.assert_allclose(v, np.round(v), atol=1e-4)


@pytest.mark.mnist
def test_mnist_subset_and_env(mnist_dir, monkeypatch):
    full = data.load("mnist", data_dir=mnist_dir)
    monkeypatch.setenv("SGJAX_DATA_DIR", str(mnist_dir))
    ds = data.load("mnist", n_train=500, n_test=100)
    assert ds.x_train.shape == (500, 784) and ds.y_test.shape == (100,)
    np.testing.assert_array_equal(ds.x_train, full.x_train[:500])
    np.testing.assert_array_equal(ds.y_test, full.y_test[:100])
    # The returned arrays are fresh: changing them leaves the cache intact.
    ds.x_train[:] = -1.0
    assert data.load("mnist", n_train=500, n_test=100).x_train.min() == 0.0
    with pytest.raises(ValueError, match="n_train"):
        data.load("mnist", n_train=0)


@pytest.mark.mnist
def test_mnist_raw_files_match_gz(mnist_dir, tmp_path):
    """Raw (decompressed) IDX files load to the same arrays as the .gz ones."""
    for stem in data.IDX_FILES.values():
        src = mnist_dir / stem
        if src.exists():
            shutil.copy(src, tmp_path / stem)
        else:
            with gzip.open(mnist_dir / (stem + ".gz"), "rb") as f:
                (tmp_path / stem).write_bytes(f.read())
    a = data.load("mnist", data_dir=mnist_dir, n_test=2000)
    b = data.load("mnist", data_dir=tmp_path, n_test=2000)
    for u, v in zip(a[1:5], b[1:5]):
        np.testing.assert_array_equal(u, v)


# ------------------------------------------------------------- tiny hand-built IDX files


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return head + payload


def _write_set(d: Path, n_train=5, n_test=3, *, gz=True, seed=0):
    """A tiny, valid MNIST-format directory: 28×28 images, labels 0..9."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[split] = (img, lab)
        for key, magic, arr in (
            (f"{split}_images", data.IMAGES_MAGIC, img),
            (f"{split}_labels", data.LABELS_MAGIC, lab),
        ):
            blob = _idx(magic, arr.shape, arr.tobytes())
            name = data.IDX_FILES[key] + (".gz" if gz else "")
            (d / name).write_bytes(gzip.compress(blob) if gz else blob)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_tiny_idx_roundtrip(tmp_path, gz):
    arrays = _write_set(tmp_path, gz=gz)
    ds = data.load("mnist", data_dir=tmp_path)
    img, lab = arrays["train"]
    np.testing.assert_array_equal(ds.x_train, img.reshape(5, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.y_train, lab)
    assert ds.x_test.shape == (3, 784) and ds.y_test.dtype == np.int32
    # Fashion-MNIST has the same format; a data_dir with a fashion_mnist sub-directory works.
    _write_set(tmp_path / "fm" / "fashion_mnist", seed=1, gz=gz)
    fm = data.load("fashion-mnist", data_dir=tmp_path / "fm")
    assert fm.name == "fashion_mnist" and fm.x_train.shape == (5, 784)


def _corrupt(path: Path, fn):
    """Rewrite a .gz IDX file with ``fn(decompressed bytes)``."""
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(fn(raw)))


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        data.load("mnist", data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "SGJAX_DATA_DIR" in msg and "never downloads" in msg
    assert "train-images-idx3-ubyte" in msg
    # Through the environment variable: it is used, and named in the message.
    monkeypatch.setenv("SGJAX_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"via SGJAX_DATA_DIR.*no such directory"):
        data.load("mnist")
    # One file missing out of four: the message names it.
    _write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        data.load("mnist", data_dir=tmp_path)


def test_fashion_never_reads_mnist_from_env_dir(tmp_path, monkeypatch):
    """Both sets share file names: SGJAX_DATA_DIR itself is MNIST's, not Fashion's."""
    _write_set(tmp_path)
    monkeypatch.setenv("SGJAX_DATA_DIR", str(tmp_path))
    assert data.load("mnist").x_train.shape == (5, 784)
    with pytest.raises(FileNotFoundError, match="fashion_mnist"):
        data.load("fashion_mnist")


@pytest.mark.parametrize(
    ("file", "fn", "match"),
    [
        ("train-images-idx3-ubyte.gz", lambda b: b[:-10], "truncated"),
        ("train-labels-idx1-ubyte.gz", lambda b: b[:2], "too short"),
        ("train-images-idx3-ubyte.gz", lambda b: b + b"xx", "trailing bytes"),
        (
            "train-images-idx3-ubyte.gz",
            lambda b: (0x801).to_bytes(4, "big") + b[4:],
            "magic number is 0x00000801, expected 0x00000803",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            lambda b: (0x803).to_bytes(4, "big") + b[4:],
            "magic number is 0x00000803, expected 0x00000801",
        ),
        # Labels for 4 images where the image file holds 5: count mismatch.
        (
            "train-labels-idx1-ubyte.gz",
            lambda b: _idx(0x801, (4,), b[8:12]),
            "5 images but .* 4 labels",
        ),
        # Images of the wrong size (a 3-D file of 5 × 28 × 27, consistent in itself).
        (
            "train-images-idx3-ubyte.gz",
            lambda b: _idx(0x803, (5, 28, 27), b[16 : 16 + 5 * 28 * 27]),
            r"shape \(28, 27\), expected \(28, 28\)",
        ),
        ("train-labels-idx1-ubyte.gz", lambda b: b[:8] + bytes([10]) + b[9:], "labels must"),
    ],
)
def test_corrupt_files_raise_clear_errors(tmp_path, file, fn, match):
    _write_set(tmp_path)
    _corrupt(tmp_path / file, fn)
    with pytest.raises(ValueError, match=match) as e:
        data.load("mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value)  # the message names the file


def test_truncated_gzip_stream(tmp_path):
    _write_set(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-30])  # cut the compressed stream itself
    with pytest.raises(ValueError, match="corrupt or truncated"):
        data.load("mnist", data_dir=tmp_path)


def test_not_gzip_at_all(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="corrupt"):
        data.load("mnist", data_dir=tmp_path)


def test_cache_sees_a_replaced_file(tmp_path):
    """The in-memory cache is keyed by size/mtime: a new file is read again."""
    _write_set(tmp_path, seed=0)
    a = data.load("mnist", data_dir=tmp_path)
    _write_set(tmp_path, n_train=6, seed=1)
    b = data.load("mnist", data_dir=tmp_path)
    assert a.x_train.shape == (5, 784) and b.x_train.shape == (6, 784)
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob("*.npz"))


def test_a_cached_file_is_still_checked_against_the_magic_asked_for(tmp_path):
    # The cache used to return a file read once without checking the magic number of
    # the second request (labels read as images passed silently).
    p = tmp_path / "labels"
    p.write_bytes(_idx(0x801, (3,), bytes([1, 2, 3])))
    assert data.read_idx(p, magic=data.LABELS_MAGIC).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="IDX magic number is 0x00000801, expected 0x00000803"):
        data.read_idx(p, magic=data.IMAGES_MAGIC)


def test_read_idx_validates(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(_idx(0x801, (3,), bytes([1, 2, 3])))
    assert data.read_idx(p).tolist() == [1, 2, 3]
    p.write_bytes(_idx(0x0D01, (1,), bytes(4)))  # float32 IDX: not unsigned bytes
    with pytest.raises(ValueError, match="not an unsigned-byte IDX header"):
        data.read_idx(p)
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "absent")


# ------------------------------------------------------------------------ generated sets


@pytest.mark.parametrize(("k", "n"), [(2, 100), (100, 1000)])
@pytest.mark.parametrize("kind", ["linear", "noisy", "random"])
def test_artificial_sizes_and_seeds(kind, k, n):
    ds = data.load(f"{kind}{k}", seed=7)
    assert ds.x_train.shape == (n, k) and ds.y_train.shape == (n,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 2 and set(np.unique(ds.y_train)) <= {0, 1}
    assert ds.x_test is ds.x_train and ds.y_test is ds.y_train
    again = data.load(f"{kind}{k}", seed=7)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_train, again.y_train)
    other = data.load(f"{kind}{k}", seed=8)
    assert not np.array_equal(ds.x_train, other.x_train)
    # Both classes present (a hyperplane through the origin splits a Gaussian roughly evenly).
    assert 0.1 < ds.y_train.mean() < 0.9


def _separable(x, y) -> bool:
    """Exactly separable by a hyperplane through the origin: hard-margin linear SVM."""
    from sklearn.svm import LinearSVC

    clf = LinearSVC(C=1e6, fit_intercept=False, max_iter=200_000, tol=1e-8)
    clf.fit(x.astype(np.float64), y)
    return bool((clf.predict(x) == y).all())


@pytest.mark.parametrize("k", [2, 100])
def test_linear_is_separable_noisy_is_not(k):
    lin = data.artificial("linear", k, seed=3)
    noisy = data.artificial("noisy", k, seed=3)
    assert _separable(lin.x_train, lin.y_train)
    np.testing.assert_array_equal(lin.x_train, noisy.x_train)
    # Exactly 10% of the linear labels are swapped.
    flipped = (lin.y_train != noisy.y_train).mean()
    assert flipped == pytest.approx(0.1, abs=1e-12)
    if k == 2:  # in 2-D, 10 swapped points out of 100 make the set non-separable
        assert not _separable(noisy.x_train, noisy.y_train)


def test_random_labels_are_unrelated_to_x():
    ds = data.artificial("random", 2, n=4000, seed=0)
    lin = data.artificial("linear", 2, n=4000, seed=0)
    agree = (ds.y_train == lin.y_train).mean()
    assert abs(agree - 0.5) < 0.05  # 4000 coin flips: sd 0.008


def test_grid():
    ds = data.load("grid_noisy", size=10, seed=2)
    assert ds.x_train.shape == (100, 2) and ds.num_classes == 2
    assert ds.x_train.min() == -1.0 and ds.x_train.max() == 1.0
    assert len(np.unique(ds.x_train[:, 0])) == 10 and len(np.unique(ds.x_train[:, 1])) == 10
    # 90% keep the hyperplane label: find the best hyperplane through the origin by a dense
    # sweep of directions; at most 10% of points (the relabelled ones) disagree with it.
    angles = np.linspace(0, 2 * np.pi, 3600, endpoint=False)
    W = np.stack([np.cos(angles), np.sin(angles)])
    agree = ((ds.x_train @ W > 0) == ds.y_train[:, None]).mean(0).max()
    assert agree >= 0.9
    rnd = data.load("grid_random", size=10, seed=2)
    np.testing.assert_array_equal(rnd.x_train, ds.x_train)
    assert ((rnd.x_train @ W > 0) == rnd.y_train[:, None]).mean(0).max() < 0.9
    np.testing.assert_array_equal(data.grid("noisy", seed=2).y_train, ds.y_train)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        data.load("nope")
    with pytest.raises(ValueError, match="`k` must be"):
        data.artificial("linear", 0)
    with pytest.raises(ValueError, match="`kind` must be"):
        data.artificial("gauss", 2)
    with pytest.raises(ValueError, match="`size` must be"):
        data.grid(size=1)
    with pytest.raises(ValueError, match="`name` must be"):
        data.find_idx_dir("cifar")


def test_digits_still_loads():
    ds = data.load("digits")
    assert ds.x_train.shape[1] == 64 and ds.num_classes == 10


def test_digits_read_without_sklearn_equal_load_digits(monkeypatch, tmp_path):
    """The digits read from scikit-learn's package file (no sklearn import) are exactly
    ``sklearn.datasets.load_digits``'s pixels and labels; with the file not found, or of
    another layout, they are read through scikit-learn, the same arrays. Planted: the
    label column read as a pixel (``table[:, 1:]``) → red."""
    from sklearn.datasets import load_digits

    ref = load_digits()
    other = tmp_path / "digits.csv.gz"
    with gzip.open(other, "wt") as f:
        f.write("1,2,3\n4,5,6\n")
    for case in ("file", "no file", "other layout"):
        with monkeypatch.context() as m:
            if case == "no file":
                m.setattr(data, "_digits_file", lambda: None)
            elif case == "other layout":
                m.setattr(data, "_digits_file", lambda: other)
            x, y = data._digits_arrays()
        np.testing.assert_array_equal(x, ref.data, err_msg=case)
        np.testing.assert_array_equal(y, ref.target, err_msg=case)
        assert y.dtype == np.int32, case
    assert data._digits_file() is not None  # the fast path is the one taken here
    ds = data.digits()
    assert ds.x_train.dtype == np.float32 and ds.x_train.max() == 1.0 and ds.x_train.min() == 0
