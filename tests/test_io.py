"""Tests for convexcnn.io: atomic writes, models and checkpoints."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from convexcnn import io as cio
from convexcnn.io import (
    atomic_write_bytes,
    atomic_write_text,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
    to_jsonable,
)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g, dtype=torch.float64)
    return {
        "filters": torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64),
        "weights": torch.randn(3, generator=g, dtype=torch.float32),
        "patterns": torch.randint(0, 2, (5, 7), generator=g, dtype=torch.bool),
        "counts": torch.arange(4, dtype=torch.int64),
        "transposed": base.t(),  # non-contiguous
        "view": base[1],  # shares storage with base
        "special": torch.tensor([float("nan"), float("inf"), -0.0, 1e-310], dtype=torch.float64),
    }


def _assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert a[key].contiguous().view(torch.uint8).equal(b[key].view(torch.uint8)), key


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"one")
    assert path.read_bytes() == b"one"
    atomic_write_bytes(path, b"two, longer")
    assert path.read_bytes() == b"two, longer"
    atomic_write_text(path, "ünïcode\n")
    assert path.read_text(encoding="utf-8") == "ünïcode\n"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temp files left behind


def test_atomic_write_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write_text(path, "a")
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o600)
    atomic_write_text(path, "b")
    assert path.stat().st_mode & 0o777 == 0o600


def test_atomic_write_failure_in_replace_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.json"
    path.write_text("old contents")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write_text(path, "new contents")
    assert path.read_text() == "old contents"
    assert os.listdir(tmp_path) == ["model.json"]


def test_atomic_write_failure_during_write_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.safetensors"
    path.write_bytes(b"previous")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(path, b"x" * 10_000)
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["state.safetensors"]


def test_atomic_write_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "nope" / "f", b"x")


# --------------------------------------------------------------------------------------------
# to_jsonable
# --------------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Config:
    beta: float
    shape: tuple[int, int]


def test_to_jsonable_converts_scalars_and_containers() -> None:
    meta = {
        "beta": np.float64(0.5),
        "n": np.int64(7),
        "flag": np.bool_(True),
        "t": torch.tensor(2.5),
        "arr": np.arange(3),
        "tensor": torch.tensor([[1, 2]]),
        "shape": (1, 8, 8),
        "tags": {"b", "a"},
        "path": Path("/tmp/x"),
        "dtype": torch.float64,
        "color": Color.RED,
        "config": Config(beta=1e-3, shape=(2, 2)),
        3: "int key",
        "nested": {"inner": [np.float32(1.5), (np.int8(-1),)]},
    }
    out = to_jsonable(meta)
    assert json.loads(json.dumps(out)) == out
    assert out == {
        "beta": 0.5,
        "n": 7,
        "flag": True,
        "t": 2.5,
        "arr": [0, 1, 2],
        "tensor": [[1, 2]],
        "shape": [1, 8, 8],
        "tags": ["a", "b"],
        "path": "/tmp/x",
        "dtype": "torch.float64",
        "color": "red",
        "config": {"beta": 1e-3, "shape": [2, 2]},
        "3": "int key",
        "nested": {"inner": [1.5, [-1]]},
    }
    assert type(out["n"]) is int and type(out["flag"]) is bool


def test_to_jsonable_rejects_unknown_types_naming_the_key() -> None:
    with pytest.raises(TypeError, match=r"metadata\['solver'\].*object"):
        to_jsonable({"solver": object()})
    with pytest.raises(TypeError, match="two keys"):
        to_jsonable({1: "a", "1": "b"})


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def test_save_load_model_round_trip_bit_exact(tmp_path: Path) -> None:
    tensors = _tensors()
    meta = {"arch": "two_layer_sum", "beta": np.float64(1e-3), "kernel": (2, 2)}
    out_dir = save_model(tmp_path / "a" / "b", tensors, meta)
    assert out_dir == tmp_path / "a" / "b"
    assert sorted(os.listdir(out_dir)) == ["model.json", "model.safetensors"]
    loaded, loaded_meta = load_model(out_dir)
    _assert_bit_exact(tensors, loaded)
    assert loaded_meta["arch"] == "two_layer_sum"
    assert loaded_meta["beta"] == 1e-3 and loaded_meta["kernel"] == [2, 2]
    assert loaded_meta["format_version"] == 1
    assert isinstance(loaded_meta["convexcnn_version"], str) and loaded_meta["convexcnn_version"]
    # Input tensors are not modified or aliased.
    assert tensors["transposed"].is_contiguous() is False


def test_save_model_overwrites(tmp_path: Path) -> None:
    save_model(tmp_path, {"w": torch.zeros(2)}, {"v": 1})
    save_model(tmp_path, {"w": torch.ones(3)}, {"v": 2})
    tensors, meta = load_model(tmp_path)
    assert tensors["w"].tolist() == [1.0, 1.0, 1.0] and meta["v"] == 2


def test_save_model_version_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    save_model(tmp_path, {"w": torch.zeros(1)}, {})
    assert load_model(tmp_path)[1]["convexcnn_version"] == "unknown"


def test_save_model_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"tensors\['w'\] must be a torch.Tensor"):
        save_model(tmp_path, {"w": np.zeros(2)}, {})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="metadata"):
        save_model(tmp_path, {"w": torch.zeros(2)}, {"f": lambda: 1})
    assert not (tmp_path / "model.safetensors").exists()


def test_load_model_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "absent")
    save_model(tmp_path, {"w": torch.zeros(2)}, {})
    (tmp_path / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.json is missing"):
        load_model(tmp_path)
    save_model(tmp_path, {"w": torch.zeros(2)}, {})
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        load_model(tmp_path)


@pytest.mark.parametrize("keep", [0, 7, 40, -3])
def test_load_model_truncated_safetensors(tmp_path: Path, keep: int) -> None:
    save_model(tmp_path, _tensors(), {})
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        load_model(tmp_path)
    assert str(path) in str(info.value)


def test_load_model_mismatched_pair(tmp_path: Path) -> None:
    save_model(tmp_path / "a", {"w": torch.zeros(2)}, {})
    save_model(tmp_path / "b", {"w": torch.ones(2)}, {})
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path / "a")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ("{}", "format_version"),
        ('{"format_version": 99}', "newer"),
    ],
)
def test_load_model_bad_metadata(tmp_path: Path, text: str, needle: str) -> None:
    save_model(tmp_path, {"w": torch.zeros(2)}, {})
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(ValueError, match=needle) as info:
        load_model(tmp_path)
    assert "model.json" in str(info.value)


def test_interrupted_save_model_keeps_previous_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(tmp_path, {"w": torch.zeros(2)}, {"v": 1})
    real_replace = os.replace

    def fail_on_json(src: Any, dst: Any) -> None:
        if str(dst).endswith(".json"):
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_json)
    with pytest.raises(OSError, match="killed"):
        save_model(tmp_path, {"w": torch.ones(2)}, {"v": 2})
    monkeypatch.undo()
    # Half-written save: new tensors, old metadata. It must be detected, not silently mixed.
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["v"] == 1


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    state = _tensors()
    info = {"iteration": np.int64(120), "objective": 0.25, "history": (1.0, 0.5)}
    path = save_checkpoint(tmp_path / "runs" / "ckpt.safetensors", state, info)
    assert path.is_file()
    loaded, loaded_info = load_checkpoint(path)
    _assert_bit_exact(state, loaded)
    assert loaded_info == {"iteration": 120, "objective": 0.25, "history": [1.0, 0.5]}

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata()
    assert json.loads(header[cio._CHECKPOINT_KEY])["iteration"] == 120


def test_checkpoint_overwrite_and_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(3)}, {"k": 1})
    save_checkpoint(path, {}, {"k": 2})
    state, info = load_checkpoint(path)
    assert state == {} and info == {"k": 2}


def test_interrupted_checkpoint_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.zeros(3)}, {"k": 1})

    def boom(*args: Any) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"x": torch.ones(3)}, {"k": 2})
    monkeypatch.undo()
    state, info = load_checkpoint(path)
    assert state["x"].tolist() == [0.0, 0.0, 0.0] and info == {"k": 1}
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    path = save_checkpoint(tmp_path / "c.safetensors", {"x": torch.arange(100.0)}, {"k": 1})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(path)
    # A plain safetensors file without our metadata is not a checkpoint.
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="not a convexcnn checkpoint"):
        load_checkpoint(plain)
    # A model's tensor file is not a checkpoint either.
    save_model(tmp_path / "m", {"x": torch.zeros(1)}, {})
    with pytest.raises(ValueError, match="not a convexcnn checkpoint"):
        load_checkpoint(tmp_path / "m" / "model.safetensors")
