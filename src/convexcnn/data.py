"""Data sets and input validation at the public edge.

Shapes follow SPEC §1: images are ``(n, C, H, W)``, 1-D signals ``(n, C, L)``; binary targets are
``±1`` vectors of shape ``(n,)``; multi-class targets are integer labels ``0..c-1`` of shape
``(n,)`` (``one_hot`` turns them into an ``(n, c)`` matrix).

Sources understood by :func:`load_dataset`:

- ``"digits"``: scikit-learn's 8×8 hand-written digits, ``(n, 1, 8, 8)`` in ``[0, 1]``;
- a ``.npz`` file with arrays ``X``, ``y`` and optionally ``X_test``, ``y_test``;
- an idx file (MNIST / Fashion-MNIST format, gzip or plain) or a directory holding the four
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` files (each optionally ``.gz``).
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "Dataset",
    "as_float_tensor",
    "load_dataset",
    "load_digits_binary",
    "one_hot",
    "read_idx",
    "to_pm1",
    "validate_targets",
]

Task = Literal["regression", "binary", "multiclass"]
_TASKS: tuple[str, ...] = ("regression", "binary", "multiclass")


# --------------------------------------------------------------------------------------------
# Data set container
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A train/test split.

    ``X_train``: ``(n_train, C, H, W)`` (or ``(n_train, C, L)``) float64 in ``[0, 1]`` for image
    sources; ``y_train``: ``(n_train,)``. With two classes the targets are ``±1`` float64 (first
    class → −1); with more, int64 labels indexing ``classes``; for regression data (non-integer
    targets) float64 values and ``classes == ()``.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[Any, ...]
    name: str

    @property
    def task(self) -> Task:
        """``"binary"``, ``"multiclass"`` or ``"regression"``."""
        if len(self.classes) == 2:
            return "binary"
        if len(self.classes) == 0:
            return "regression"
        return "multiclass"

    @property
    def n_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.classes)


# --------------------------------------------------------------------------------------------
# idx format (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(
                f"{path}: corrupt or truncated gzip data ({exc}); re-download the file"
            ) from exc
    return raw


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (gzip or plain) into an array of its stored shape.

    Header: two zero bytes, a dtype code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float,
    0x0E double), the number of dimensions, then one big-endian uint32 per dimension. The result
    uses native byte order; ubyte data stays ``uint8``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"idx file {p} does not exist")
    data = _read_maybe_gzip(p)
    if len(data) < 4:
        raise ValueError(f"{p}: truncated idx file ({len(data)} bytes, header needs at least 4)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{p}: bad idx magic number {data[:4].hex()} (must start with two zero bytes); "
            "is this really an idx file?"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{p}: unknown idx dtype code 0x{code:02X} (known: {known})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{p}: truncated idx header ({len(data)} bytes, {ndim} dimensions need {header_len})"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    body = len(data) - header_len
    if body < expected:
        raise ValueError(
            f"{p}: truncated idx file: shape {dims} needs {expected} data bytes, found {body}"
        )
    if body > expected:
        raise ValueError(
            f"{p}: idx file has {body - expected} unexpected trailing bytes after shape {dims}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header_len)
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


_IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx(directory: Path, stem: str) -> Path | None:
    for base in (stem, stem.replace("-idx", ".idx")):
        for name in (base, base + ".gz"):
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def _idx_images(arr: np.ndarray, path: Path) -> np.ndarray:
    """``(n, H, W)`` → ``(n, 1, H, W)``; ``(n, L)`` → ``(n, 1, L)``; uint8 scaled by 1/255."""
    if arr.ndim < 2:
        raise ValueError(f"{path}: expected an images file with ≥ 2 dimensions, got {arr.shape}")
    X = arr.astype(np.float64)
    if arr.dtype == np.uint8:
        X /= 255.0
    if arr.ndim in (2, 3):
        X = X[:, None]
    return X


def _load_idx_source(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Any]:
    if path.is_dir():
        found = {key: _find_idx(path, stem) for key, stem in _IDX_STEMS.items()}
        for key in ("train_images", "train_labels"):
            if found[key] is None:
                raise FileNotFoundError(
                    f"{path} holds no {_IDX_STEMS[key]}[.gz]; a data directory needs the MNIST-"
                    "format files train-images-idx3-ubyte, train-labels-idx1-ubyte and optionally "
                    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may end in .gz)"
                )
        img_path, lab_path = found["train_images"], found["train_labels"]
        test_img, test_lab = found["test_images"], found["test_labels"]
        if (test_img is None) != (test_lab is None):
            missing = "t10k-images-idx3-ubyte" if test_img is None else "t10k-labels-idx1-ubyte"
            raise FileNotFoundError(f"{path} has only half of the test set: {missing} is missing")
    else:
        img_path, lab_path, test_img, test_lab = _idx_pair_for_file(path)
    assert img_path is not None and lab_path is not None
    X = _idx_images(read_idx(img_path), img_path)
    y = read_idx(lab_path)
    if test_img is not None and test_lab is not None:
        X_test = _idx_images(read_idx(test_img), test_img)
        y_test = read_idx(test_lab)
        return X, y, X_test, y_test
    return X, y, None, None


def _idx_pair_for_file(path: Path) -> tuple[Path, Path, Path | None, Path | None]:
    """Given one idx images (or labels) file, find its partner, and a test pair if it is train."""
    name = path.name
    if "images" in name:
        img_path = path
        lab_path = path.with_name(name.replace("images", "labels").replace("idx3", "idx1"))
    elif "labels" in name:
        lab_path = path
        img_path = path.with_name(name.replace("labels", "images").replace("idx1", "idx3"))
    else:
        raise ValueError(
            f"{path}: cannot tell whether this idx file holds images or labels; name it like "
            "train-images-idx3-ubyte / train-labels-idx1-ubyte or pass the directory instead"
        )
    if not img_path.is_file() or not lab_path.is_file():
        missing = img_path if not img_path.is_file() else lab_path
        raise FileNotFoundError(f"{path}: the matching idx file {missing} does not exist")
    test_img = test_lab = None
    if name.startswith("train"):
        cand_img = img_path.with_name(img_path.name.replace("train", "t10k", 1))
        cand_lab = lab_path.with_name(lab_path.name.replace("train", "t10k", 1))
        if cand_img.is_file() and cand_lab.is_file():
            test_img, test_lab = cand_img, cand_lab
    return img_path, lab_path, test_img, test_lab


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Any]:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError, ...
        raise ValueError(f"{path}: cannot read as .npz ({exc})") from exc
    with archive:
        keys = set(archive.files)
        missing = {"X", "y"} - keys
        if missing:
            raise ValueError(
                f"{path}: .npz file lacks array(s) {sorted(missing)}; it needs 'X' and 'y' "
                f"(optionally 'X_test' and 'y_test'), found {sorted(keys)}"
            )
        if ("X_test" in keys) != ("y_test" in keys):
            raise ValueError(f"{path}: .npz file must hold both 'X_test' and 'y_test' or neither")
        X, y = archive["X"], archive["y"]
        X_test = archive["X_test"] if "X_test" in keys else None
        y_test = archive["y_test"] if "y_test" in keys else None

    def to_float(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)

    return to_float(X), y, (None if X_test is None else to_float(X_test)), y_test


def _load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = np.asarray(bunch.images, dtype=np.float64).reshape(-1, 1, 8, 8) / 16.0
    return X, np.asarray(bunch.target)


def _is_classification(y: np.ndarray) -> bool:
    if y.dtype.kind in "biuUSO":
        return True
    if y.dtype.kind == "f":
        finite = np.isfinite(y)
        return bool(finite.all() and np.all(y == np.round(y)))
    return False


def _stratified_subset(labels: np.ndarray | None, n: int, size: int, seed: int) -> np.ndarray:
    """Deterministic subset of ``size`` indices out of ``n`` keeping class proportions.

    Allocation per class by largest remainder; within a class a seeded permutation picks the
    members. Indices are returned sorted (original order kept).
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.permutation(n)[:size])
    values, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(values))
    quota = counts * (size / n)
    alloc = np.floor(quota).astype(np.int64)
    remainder = size - int(alloc.sum())
    if remainder > 0:
        order = np.argsort(-(quota - alloc), kind="stable")
        alloc[order[:remainder]] += 1
    chosen = []
    for k in range(len(values)):
        members = np.flatnonzero(inverse == k)
        chosen.append(members[rng.permutation(len(members))[: alloc[k]]])
    return np.sort(np.concatenate(chosen))


def _check_source_arrays(X: np.ndarray, y: np.ndarray, where: str) -> None:
    if X.ndim < 2:
        raise ValueError(f"{where}: X must have shape (n, ...) with n samples, got {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"{where}: y must be a 1-D vector of length n, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{where}: X has {X.shape[0]} samples but y has {y.shape[0]} entries; they must match"
        )


def load_dataset(
    name_or_path: str | os.PathLike[str],
    *,
    classes: Sequence[Any] | None = None,
    test_size: float = 0.3,
    seed: int = 0,
    limit: int | None = None,
) -> Dataset:
    """Load ``"digits"``, an ``.npz`` file, an idx file or a directory of MNIST-format idx files.

    ``classes`` keeps only those original labels, in that order (2 → ±1 targets, first → −1;
    more → labels ``0..c-1``). ``None`` keeps every label (sorted). Non-integer float targets from
    an ``.npz`` with ``classes=None`` are treated as regression. Without a separate test set the
    data is split by a stratified ``train_test_split(test_size, random_state=seed)``. ``limit``
    caps the training set with a deterministic stratified subset.
    """
    if not (isinstance(test_size, float | int) and 0.0 < float(test_size) < 1.0):
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")

    X_test: np.ndarray | None
    y_test: np.ndarray | None
    if isinstance(name_or_path, str) and name_or_path == "digits":
        name = "digits"
        X, y = _load_digits_raw()
        X_test = y_test = None
    else:
        path = Path(name_or_path)
        name = path.stem if path.is_file() else path.name
        if not path.exists():
            raise FileNotFoundError(
                f"data set {str(name_or_path)!r} is neither a known name ('digits') nor an "
                "existing .npz file, idx file or directory of idx files"
            )
        if path.is_file() and path.suffix == ".npz":
            X, y, X_test, y_test = _load_npz(path)
        else:
            X, y, X_test, y_test = _load_idx_source(path)
    where = name
    _check_source_arrays(X, y, where)
    if X_test is not None and y_test is not None:
        _check_source_arrays(X_test, y_test, f"{where} (test set)")
        if X_test.shape[1:] != X.shape[1:]:
            raise ValueError(
                f"{where}: X_test samples have shape {X_test.shape[1:]} but X samples "
                f"{X.shape[1:]}; they must match"
            )

    # ---- classes and targets
    y_all = y if y_test is None else np.concatenate([y, y_test])
    if classes is None and not _is_classification(y_all):
        cls: tuple[Any, ...] = ()
    elif classes is None:
        cls = tuple(v.item() if isinstance(v, np.generic) else v for v in np.unique(y_all))
    else:
        cls = tuple(classes)
        if len(cls) < 2:
            raise ValueError(f"classes must name at least 2 labels, got {cls!r}")
        if len(set(cls)) != len(cls):
            raise ValueError(f"classes must be distinct, got {cls!r}")
        present = set(np.unique(y_all).tolist())
        absent = [c for c in cls if c not in present]
        if absent:
            raise ValueError(
                f"classes {absent!r} do not occur in data set {where!r}; "
                f"its labels are {sorted(present)!r}"
            )

    def select(Xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not cls:
            return Xs, ys.astype(np.float64)
        idx = np.zeros(ys.shape[0], dtype=np.int64) - 1
        for k, c in enumerate(cls):
            idx[ys == c] = k
        keep = idx >= 0
        labels = idx[keep]
        if len(cls) == 2:
            return Xs[keep], np.where(labels == 0, -1.0, 1.0)
        return Xs[keep], labels

    X, y = select(X, y)
    stratify_ok = bool(cls)
    if X_test is not None and y_test is not None:
        X_test, y_test = select(X_test, y_test)
    else:
        from sklearn.model_selection import train_test_split

        try:
            X, X_test, y, y_test = train_test_split(
                X, y, test_size=test_size, random_state=seed, stratify=y if stratify_ok else None
            )
        except ValueError as exc:
            raise ValueError(
                f"{where}: cannot split {len(y)} samples with test_size={test_size} "
                f"({exc}); use more data or a different test_size"
            ) from exc
    assert X_test is not None and y_test is not None

    if limit is not None and limit < len(y):
        keep = _stratified_subset(y if stratify_ok else None, len(y), limit, seed)
        X, y = X[keep], y[keep]

    return Dataset(
        X_train=np.ascontiguousarray(X, dtype=np.float64),
        y_train=np.ascontiguousarray(y),
        X_test=np.ascontiguousarray(X_test, dtype=np.float64),
        y_test=np.ascontiguousarray(y_test),
        classes=cls,
        name=name,
    )


def load_digits_binary(
    classes: tuple[int, int] = (3, 8), *, test_size: float = 0.3, seed: int = 0
) -> Dataset:
    """Two digits from scikit-learn's digits as a ±1 problem: X ``(n, 1, 8, 8)`` in ``[0, 1]``."""
    if len(classes) != 2:
        raise ValueError(f"classes must name exactly 2 digits, got {classes!r}")
    return load_dataset("digits", classes=classes, test_size=test_size, seed=seed)


# --------------------------------------------------------------------------------------------
# Validation at the public edge
# --------------------------------------------------------------------------------------------

_NUMPY_FROM_TORCH: dict[torch.dtype, type[np.floating[Any]]] = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
}


def _nonfinite_message(name: str, mask: np.ndarray) -> str:
    bad = np.argwhere(mask)
    first = tuple(int(i) for i in bad[0]) if mask.ndim else ()
    where = f"index {first}" if first else "its only entry"
    return (
        f"{name} contains NaN or Inf at {where} ({len(bad)} non-finite entries in total); "
        "clean or impute the data before fitting"
    )


def as_float_tensor(X: Any, name: str = "X", dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Convert array-like ``X`` (numpy array, torch tensor, nested lists) to a floating tensor.

    Any shape is kept. Raises ``ValueError`` naming ``name`` for non-numeric, ragged, empty or
    non-finite input. Torch inputs keep their device.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if isinstance(X, torch.Tensor):
        t = X.detach()
        if t.is_complex():
            raise ValueError(
                f"{name} is complex ({t.dtype}); pass real-valued data (e.g. its real part)"
            )
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); pass at least one sample")
        mask = ~torch.isfinite(t) if t.is_floating_point() else None
        if mask is not None and bool(mask.any()):
            raise ValueError(_nonfinite_message(name, mask.cpu().numpy()))
        out = t.to(dtype)
    else:
        try:
            arr = np.asarray(X)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{name} could not be converted to a numeric array ({exc}); pass a numpy array, "
                "a torch tensor or equal-length nested lists of numbers"
            ) from exc
        if arr.dtype.kind == "c":
            raise ValueError(
                f"{name} is complex ({arr.dtype}); pass real-valued data (e.g. its real part)"
            )
        if arr.dtype.kind in "USVMm":
            raise ValueError(
                f"{name} must hold numbers, got dtype {arr.dtype}; convert strings, dates or "
                "records to numbers (e.g. encode labels) before fitting"
            )
        if arr.dtype.kind not in "biuf":
            try:
                arr = arr.astype(np.float64)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"{name} must hold numbers, got dtype {arr.dtype} ({exc}); convert strings or "
                    "objects to numbers (e.g. encode labels) before fitting"
                ) from exc
        if arr.size == 0:
            raise ValueError(f"{name} is empty (shape {arr.shape}); pass at least one sample")
        if arr.dtype.kind == "f":
            finite = np.isfinite(arr)
            if not finite.all():
                raise ValueError(_nonfinite_message(name, ~finite))
        target = _NUMPY_FROM_TORCH.get(dtype)
        if target is not None:
            with np.errstate(over="ignore"):  # overflow is reported below
                arr = np.array(arr, dtype=target, copy=True, order="C")
            out = torch.from_numpy(arr)
        else:  # e.g. bfloat16, which numpy lacks
            out = torch.from_numpy(np.array(arr, dtype=np.float64, order="C")).to(dtype)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(
            f"{name} has values too large for {dtype} (they overflow to Inf); rescale the data "
            "or use dtype=torch.float64"
        )
    return out


def validate_targets(
    y: Any,
    n_samples: int,
    *,
    task: str,
    loss: str | None = None,
    n_classes: int | None = None,
) -> torch.Tensor:
    """Check targets against ``n_samples`` and ``task``; return them as a tensor.

    - ``"regression"``: ``(n,)`` or ``(n, c)`` float64;
    - ``"binary"``: ``(n,)`` float64 holding only ±1 (``loss`` is named in the error message);
    - ``"multiclass"``: ``(n,)`` int64 labels ``0..c-1`` (``< n_classes`` when given).
    """
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
    t = as_float_tensor(y, name="y")
    if t.ndim == 0:
        raise ValueError(f"y must be a vector with one target per sample, got a scalar {y!r}")
    if t.shape[0] != n_samples:
        raise ValueError(
            f"y has {t.shape[0]} targets but X has {n_samples} samples; y must hold one target "
            "per sample (rows of X)"
        )
    if task == "regression":
        if t.ndim > 2:
            raise ValueError(
                f"y must have shape (n,) or (n, c) for regression, got {tuple(t.shape)}"
            )
        return t
    if t.ndim != 1:
        hint = " (pass class indices, e.g. Y.argmax(1), not one-hot rows)" if t.ndim == 2 else ""
        raise ValueError(f"y must have shape (n,) for task={task!r}, got {tuple(t.shape)}{hint}")
    if task == "binary":
        bad = (t != 1.0) & (t != -1.0)
        if bool(bad.any()):
            values = sorted({float(v) for v in torch.unique(t)[:5].tolist()})
            what = f"loss={loss!r}" if loss is not None else "task='binary'"
            raise ValueError(
                f"y must hold ±1 targets for {what}; found values such as {values}; map your "
                "two classes to -1/+1 (convexcnn.data.to_pm1 does this)"
            )
        return t
    # multiclass
    if bool((t != torch.round(t)).any()) or bool((t < 0).any()):
        raise ValueError(
            "y must hold integer class labels 0..c-1 for task='multiclass'; found non-integer "
            "or negative values; map your classes to 0..c-1 "
            "(e.g. numpy.unique(y, return_inverse=True))"
        )
    labels = t.to(torch.int64)
    if n_classes is not None and int(labels.max()) >= n_classes:
        raise ValueError(
            f"y holds label {int(labels.max())} but n_classes={n_classes}; labels must be "
            f"0..{n_classes - 1}"
        )
    return labels


def to_pm1(y: Any) -> np.ndarray:
    """Map a vector with exactly two distinct values to ``±1`` float64 ``(n,)``.

    The smaller value (in ``numpy.unique`` order) becomes −1, the larger +1.
    """
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"y must be a 1-D vector of labels, got shape {arr.shape}")
    values = np.unique(arr)
    if len(values) != 2:
        shown = values[:5].tolist()
        raise ValueError(
            f"y must hold exactly 2 distinct values to map to ±1, found {len(values)} "
            f"({shown}{'...' if len(values) > 5 else ''}); for more classes use integer labels "
            "and a multi-class loss"
        )
    return np.where(arr == values[0], -1.0, 1.0)


def one_hot(labels: Any, n_classes: int) -> torch.Tensor:
    """Integer labels ``(n,)`` in ``0..n_classes-1`` → float64 one-hot matrix ``(n, n_classes)``."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    t = as_float_tensor(labels, name="labels")
    if t.ndim != 1:
        raise ValueError(f"labels must have shape (n,), got {tuple(t.shape)}")
    if bool((t != torch.round(t)).any()) or bool((t < 0).any()) or bool((t >= n_classes).any()):
        raise ValueError(
            f"labels must be integers in 0..{n_classes - 1}; map your classes to 0..c-1 first"
        )
    return torch.nn.functional.one_hot(t.to(torch.int64), n_classes).to(torch.float64)
