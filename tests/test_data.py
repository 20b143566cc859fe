"""Tests for convexcnn.data: loaders, the idx reader and validation at the public edge."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convexcnn.data import (
    Dataset,
    as_float_tensor,
    load_dataset,
    load_digits_binary,
    one_hot,
    read_idx,
    to_pm1,
    validate_targets,
)

_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    """Independent idx writer: 0, 0, dtype code, ndim, big-endian uint32 dims, big-endian data."""
    kind = arr.dtype.kind + str(arr.dtype.itemsize)
    header = bytes([0, 0, _CODES[kind], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def _proportions(y: np.ndarray) -> dict[float, float]:
    values, counts = np.unique(y, return_counts=True)
    return {float(v): c / len(y) for v, c in zip(values, counts, strict=True)}


# --------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------


def test_digits_binary_shapes_range_targets_and_stratification() -> None:
    ds = load_digits_binary()
    assert isinstance(ds, Dataset)
    assert ds.classes == (3, 8) and ds.name == "digits" and ds.task == "binary"
    assert ds.X_train.shape[1:] == (1, 8, 8) and ds.X_test.shape[1:] == (1, 8, 8)
    assert ds.X_train.dtype == np.float64 and ds.y_train.dtype == np.float64
    n_total = len(ds.y_train) + len(ds.y_test)
    assert n_total == 183 + 174  # digits has 183 threes and 174 eights
    assert len(ds.y_test) == pytest.approx(0.3 * n_total, abs=1)
    for X in (ds.X_train, ds.X_test):
        assert X.min() >= 0.0 and X.max() <= 1.0
    assert ds.X_train.max() == 1.0
    assert set(np.unique(ds.y_train)) == {-1.0, 1.0} == set(np.unique(ds.y_test))
    overall = 183 / n_total
    for y in (ds.y_train, ds.y_test):
        assert abs(_proportions(y)[-1.0] - overall) < 0.02


def test_digits_first_class_is_minus_one() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_digits_binary((8, 3))
    # With classes=(8, 3), the eights are -1: count them in train + test.
    n_eights = int((raw.target == 8).sum())
    assert int((ds.y_train == -1).sum() + (ds.y_test == -1).sum()) == n_eights
    # Each training image matches a raw eight image when its label is -1.
    eights = raw.images[raw.target == 8].reshape(-1, 64) / 16.0
    img = ds.X_train[np.flatnonzero(ds.y_train == -1)[0]].reshape(64)
    assert np.any(np.all(eights == img, axis=1))


def test_digits_deterministic_and_seed_dependent() -> None:
    a, b = load_digits_binary(seed=1), load_digits_binary(seed=1)
    c = load_digits_binary(seed=2)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.X_train, c.X_train)


def test_digits_multiclass_labels_and_limit() -> None:
    ds = load_dataset("digits", classes=(1, 7, 0), limit=60, test_size=0.25)
    assert ds.classes == (1, 7, 0) and ds.task == "multiclass" and ds.n_classes == 3
    assert ds.y_train.dtype == np.int64 and len(ds.y_train) == 60
    assert np.bincount(ds.y_train).tolist() == [20, 20, 20]
    assert set(np.unique(ds.y_test)) == {0, 1, 2}
    again = load_dataset("digits", classes=(1, 7, 0), limit=60, test_size=0.25)
    assert np.array_equal(ds.X_train, again.X_train)


def test_digits_all_classes_when_none() -> None:
    ds = load_dataset("digits", limit=50)
    assert ds.classes == tuple(range(10)) and len(ds.y_train) == 50
    assert np.bincount(ds.y_train, minlength=10).tolist() == [5] * 10


def test_limit_larger_than_training_set_is_a_no_op() -> None:
    ds = load_digits_binary()
    capped = load_dataset("digits", classes=(3, 8), limit=10_000)
    assert np.array_equal(ds.X_train, capped.X_train)


# --------------------------------------------------------------------------------------------
# idx
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_read_idx_round_trip(tmp_path: Path, gz: bool, dtype: str) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    if dtype == "u1":
        arr = rng.integers(0, 256, size=(3, 4, 5)).astype(np.uint8)
    path = write_idx(tmp_path / f"a-{dtype}.idx{'.gz' if gz else ''}", arr, gz=gz)
    out = read_idx(path)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    assert out.dtype.isnative
    assert np.array_equal(out, arr)


def test_read_idx_one_dim_labels(tmp_path: Path) -> None:
    labels = np.array([0, 9, 3, 3], dtype=np.uint8)
    assert read_idx(write_idx(tmp_path / "l", labels)).tolist() == [0, 9, 3, 3]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "truncated"),
        (b"\x00\x00", "truncated"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "dtype code"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing"),
    ],
)
def test_read_idx_bad_files(tmp_path: Path, payload: bytes, needle: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=needle) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "g.gz", np.arange(100, dtype=np.uint8), gz=True)
    path = tmp_path / "cut.gz"
    path.write_bytes(good.read_bytes()[:-12])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


def _mnist_like(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 5, 6)).astype(np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_of_four_files(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    tr_x, tr_y = _mnist_like(rng, 30)
    te_x, te_y = _mnist_like(rng, 12)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", tr_x, gz=gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", tr_y, gz=gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", te_x, gz=gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", te_y, gz=gz)

    ds = load_dataset(tmp_path)
    assert ds.classes == (0, 1, 2) and ds.task == "multiclass"
    assert ds.X_train.shape == (30, 1, 5, 6) and ds.X_test.shape == (12, 1, 5, 6)
    np.testing.assert_array_equal(ds.X_train[:, 0], tr_x / 255.0)
    np.testing.assert_array_equal(ds.X_test[:, 0], te_x / 255.0)
    assert ds.y_train.tolist() == tr_y.tolist() and ds.y_test.tolist() == te_y.tolist()

    binary = load_dataset(tmp_path, classes=(2, 0))
    assert binary.task == "binary"
    assert len(binary.y_train) == 20 and len(binary.y_test) == 8
    np.testing.assert_array_equal(binary.y_train, np.where(tr_y[tr_y != 1] == 2, -1.0, 1.0))
    np.testing.assert_array_equal(binary.X_train[:, 0], tr_x[tr_y != 1] / 255.0)


def test_idx_directory_without_test_files_is_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y = _mnist_like(rng, 60)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    ds = load_dataset(tmp_path, test_size=0.5, seed=3)
    assert len(ds.y_train) == 30 and len(ds.y_test) == 30
    assert np.bincount(ds.y_train).tolist() == [10, 10, 10]


def test_idx_single_file_path_finds_partners(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tr_x, tr_y = _mnist_like(rng, 9)
    te_x, te_y = _mnist_like(rng, 6)
    img = write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr_x, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", tr_y, gz=True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", te_x, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", te_y, gz=True)
    ds = load_dataset(img)
    assert ds.X_train.shape == (9, 1, 5, 6) and ds.X_test.shape == (6, 1, 5, 6)
    assert ds.y_test.tolist() == te_y.tolist()


def test_idx_directory_missing_train_labels(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset(tmp_path)


def test_idx_images_and_labels_length_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 3, 3), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="4 samples but y has 3"):
        load_dataset(tmp_path)


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def test_npz_without_test_set_is_split_stratified(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    X = rng.random((100, 2, 4, 4))
    y = np.array(["cat"] * 40 + ["dog"] * 60)
    path = tmp_path / "pets.npz"
    np.savez(path, X=X, y=y)
    ds = load_dataset(path, test_size=0.2)
    assert ds.name == "pets" and ds.classes == ("cat", "dog") and ds.task == "binary"
    assert ds.X_train.shape == (80, 2, 4, 4) and ds.X_test.shape == (20, 2, 4, 4)
    assert _proportions(ds.y_train)[-1.0] == pytest.approx(0.4)
    assert _proportions(ds.y_test)[-1.0] == pytest.approx(0.4)
    # Rows are kept intact: every training sample is one of the inputs.
    flat = X.reshape(100, -1)
    assert all(np.any(np.all(flat == row, axis=1)) for row in ds.X_train.reshape(80, -1)[:5])


def test_npz_with_test_set_and_uint8_scaling(tmp_path: Path) -> None:
    X = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    X_test = np.full((1, 3, 4), 255, dtype=np.uint8)
    path = tmp_path / "sig.npz"
    np.savez(path, X=X, y=np.array([5, 7]), X_test=X_test, y_test=np.array([7]))
    ds = load_dataset(path)
    np.testing.assert_array_equal(ds.X_train, X / 255.0)
    np.testing.assert_array_equal(ds.X_test, np.ones((1, 3, 4)))
    assert ds.classes == (5, 7)
    assert ds.y_train.tolist() == [-1.0, 1.0] and ds.y_test.tolist() == [1.0]


def test_npz_regression_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "reg.npz"
    np.savez(path, X=rng.random((20, 1, 6)), y=rng.standard_normal(20))
    ds = load_dataset(path, test_size=0.25)
    assert ds.task == "regression" and ds.classes == ()
    assert len(ds.y_train) == 15 and ds.y_train.dtype == np.float64


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"X": np.zeros((3, 2))}, "'y'"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(3), "X_test": np.zeros((1, 2))}, "y_test"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(2)}, "3 samples but y has 2"),
        (
            {
                "X": np.zeros((3, 2)),
                "y": np.array([0, 1, 0]),
                "X_test": np.zeros((1, 5)),
                "y_test": np.array([1]),
            },
            "X_test",
        ),
    ],
)
def test_npz_bad_contents(tmp_path: Path, arrays: dict[str, np.ndarray], needle: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=needle):
        load_dataset(path)


def test_npz_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("kwargs", "exc", "needle"),
    [
        ({"name_or_path": "no-such-data-set"}, FileNotFoundError, "no-such-data-set"),
        ({"name_or_path": "digits", "test_size": 1.5}, ValueError, "test_size"),
        ({"name_or_path": "digits", "test_size": 0}, ValueError, "test_size"),
        ({"name_or_path": "digits", "limit": 0}, ValueError, "limit"),
        ({"name_or_path": "digits", "classes": (3, 42)}, ValueError, "classes"),
        ({"name_or_path": "digits", "classes": (3,)}, ValueError, "classes"),
        ({"name_or_path": "digits", "classes": (3, 3)}, ValueError, "classes"),
    ],
)
def test_load_dataset_bad_arguments(kwargs: dict[str, Any], exc: type, needle: str) -> None:
    with pytest.raises(exc, match=needle):
        load_dataset(**kwargs)


def test_load_digits_binary_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="classes"):
        load_digits_binary((1, 2, 3))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# as_float_tensor
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.arange(6, dtype=np.float32).reshape(2, 3),
        torch.arange(6).reshape(2, 3),
        [[0, 1, 2], [3, 4, 5]],
        np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::-1][:, ::-1],
    ],
)
def test_as_float_tensor_accepts(value: Any) -> None:
    t = as_float_tensor(value)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    assert t.shape == (2, 3)
    assert t.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_as_float_tensor_dtype_and_no_aliasing() -> None:
    arr = np.ones(3)
    t = as_float_tensor(arr, dtype=torch.float32)
    assert t.dtype == torch.float32
    t64 = as_float_tensor(arr)
    t64[0] = 5.0
    assert arr[0] == 1.0
    readonly = np.frombuffer(np.ones(2).tobytes())
    assert as_float_tensor(readonly).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (np.array([[1.0, np.nan]]), r"NaN or Inf at index \(0, 1\).*clean or impute"),
        (torch.tensor([1.0, float("inf")]), r"NaN or Inf at index \(1,\)"),
        ([1.0, float("-inf")], "NaN or Inf"),
        (np.zeros((0, 3)), "empty"),
        ([], "empty"),
        (["a", "b"], "must hold numbers"),
        (np.array([1 + 2j]), "complex"),
        (torch.tensor([1 + 2j]), "complex"),
        ([[1, 2], [3]], "could not be converted"),
        ([1, None], "NaN or Inf"),  # None is a missing value
        (np.array([object(), 1.0], dtype=object), "must hold numbers"),
        (np.array([1e300]), "overflow"),
    ],
)
def test_as_float_tensor_rejects(value: Any, needle: str) -> None:
    dtype = torch.float32 if needle == "overflow" else torch.float64
    with pytest.raises(ValueError, match=needle) as info:
        as_float_tensor(value, name="images", dtype=dtype)
    assert "images" in str(info.value)


def test_as_float_tensor_rejects_integer_dtype() -> None:
    with pytest.raises(ValueError, match="dtype"):
        as_float_tensor([1.0], dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# validate_targets, to_pm1, one_hot
# --------------------------------------------------------------------------------------------


def test_validate_targets_ok() -> None:
    reg = validate_targets([0.5, -2.0, 3.0], 3, task="regression")
    assert reg.dtype == torch.float64 and reg.tolist() == [0.5, -2.0, 3.0]
    multi_out = validate_targets(np.zeros((3, 2)), 3, task="regression")
    assert multi_out.shape == (3, 2)
    binary = validate_targets(np.array([1, -1, 1]), 3, task="binary")
    assert binary.dtype == torch.float64 and binary.tolist() == [1.0, -1.0, 1.0]
    multi = validate_targets([0.0, 2.0, 1.0], 3, task="multiclass", n_classes=3)
    assert multi.dtype == torch.int64 and multi.tolist() == [0, 2, 1]


@pytest.mark.parametrize(
    ("y", "n", "kwargs", "needle"),
    [
        ([1.0, 2.0], 3, {"task": "regression"}, "y has 2 targets but X has 3 samples"),
        ([1.0, np.nan, 2.0], 3, {"task": "regression"}, "y contains NaN or Inf"),
        ([], 0, {"task": "regression"}, "y is empty"),
        (np.zeros((2, 2, 2)), 2, {"task": "regression"}, "y must have shape"),
        ([0, 1, 1], 3, {"task": "binary", "loss": "logistic"}, "±1 targets for loss='logistic'"),
        ([0, 1, 1], 3, {"task": "binary"}, "to_pm1"),
        (np.ones((3, 2)), 3, {"task": "binary"}, "y must have shape"),
        ([0, 1.5, 2], 3, {"task": "multiclass"}, "y must hold integer class labels"),
        ([0, -1, 2], 3, {"task": "multiclass"}, "y must hold integer class labels"),
        ([0, 1, 3], 3, {"task": "multiclass", "n_classes": 3}, "y holds label 3"),
        (np.eye(3), 3, {"task": "multiclass"}, "argmax"),
        ([1.0], 1, {"task": "classification"}, "task"),
        (["a", "b"], 2, {"task": "binary"}, "y must hold numbers"),
        (1.0, 1, {"task": "regression"}, "y must be a vector"),
    ],
)
def test_validate_targets_rejects(y: Any, n: int, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        validate_targets(y, n, **kwargs)


def test_binary_message_says_how_to_fix() -> None:
    with pytest.raises(ValueError) as info:
        validate_targets([0, 1], 2, task="binary", loss="squared_hinge")
    msg = str(info.value)
    assert "-1/+1" in msg and "convexcnn.data.to_pm1" in msg and "squared_hinge" in msg


def test_to_pm1() -> None:
    assert to_pm1([3, 8, 8, 3]).tolist() == [-1.0, 1.0, 1.0, -1.0]
    assert to_pm1(np.array(["b", "a"])).tolist() == [1.0, -1.0]
    assert to_pm1(torch.tensor([[0], [1]])).tolist() == [-1.0, 1.0]
    assert to_pm1([-1, 1]).tolist() == [-1.0, 1.0]
    out = to_pm1([0, 1])
    assert out.dtype == np.float64
    validate_targets(out, 2, task="binary")  # what to_pm1 returns is accepted


@pytest.mark.parametrize("y", [[1, 1, 1], [1, 2, 3], [], np.zeros((2, 2))])
def test_to_pm1_rejects(y: Any) -> None:
    with pytest.raises(ValueError, match="y must"):
        to_pm1(y)


def test_one_hot() -> None:
    Y = one_hot([2, 0, 1, 2], 3)
    assert Y.dtype == torch.float64 and Y.shape == (4, 3)
    assert Y.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert one_hot(torch.tensor([0]), 1).tolist() == [[1.0]]


@pytest.mark.parametrize(
    ("labels", "n", "needle"),
    [
        ([0, 3], 3, "labels must be integers in 0..2"),
        ([0, -1], 3, "labels must be integers"),
        ([0.5], 3, "labels must be integers"),
        ([[0, 1]], 3, "labels must have shape"),
        ([0, 1], 0, "n_classes"),
        ([np.nan], 2, "labels contains NaN"),
    ],
)
def test_one_hot_rejects(labels: Any, n: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        one_hot(labels, n)
