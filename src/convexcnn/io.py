"""Saving and loading models and checkpoints, crash-safe.

Every file is written to a temporary sibling, fsynced and moved into place with ``os.replace``,
so an interrupted write leaves either the old file or the new one, never a partial file.

- A *model* is a directory with ``model.safetensors`` (tensors) and ``model.json`` (metadata,
  with ``format_version`` and ``convexcnn_version``; ``tensors_sha256`` ties the two files).
- A *checkpoint* is one safetensors file whose header metadata holds ``json.dumps(info)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

__all__ = [
    "FORMAT_VERSION",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_checkpoint",
    "load_model",
    "load_network",
    "save_checkpoint",
    "save_model",
    "save_network",
    "to_jsonable",
]

FORMAT_VERSION = 1
MODEL_TENSORS = "model.safetensors"
MODEL_METADATA = "model.json"
_CHECKPOINT_KEY = "convexcnn_checkpoint"


def _package_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("convexcnn")
    except (ImportError, PackageNotFoundError):
        return "unknown"


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable (POSIX); silently skipped where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, replace).

    On any failure the temporary file is removed and a previous ``path`` is left untouched. The
    parent directory must exist. A replaced file keeps its permission bits; a new one gets 0o644.
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {target}: directory {directory} does not exist")
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Atomic :func:`atomic_write_bytes` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


# --------------------------------------------------------------------------------------------
# JSON-able metadata
# --------------------------------------------------------------------------------------------


def to_jsonable(obj: Any, _where: str = "metadata") -> Any:
    """Convert ``obj`` to plain JSON types (dict with str keys, list, str, int, float, bool, None).

    numpy/torch scalars → Python numbers; arrays/tensors → nested lists; tuples/sets → lists;
    paths, dtypes and devices → str; enums → their value; dataclasses → dicts. Raises
    ``TypeError`` naming the offending entry for anything else.
    """
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), _where)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), _where)
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist(), _where)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, _where)
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            skey = key if isinstance(key, str) else str(to_jsonable(key, _where))
            if skey in out:
                raise TypeError(f"{_where} has two keys that both become {skey!r} in JSON")
            out[skey] = to_jsonable(value, f"{_where}[{key!r}]")
        return out
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, set | frozenset):
        items = [to_jsonable(v, f"{_where}[...]") for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(obj, os.PathLike | torch.dtype | torch.device | np.dtype):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return to_jsonable(fields, _where)
    raise TypeError(
        f"{_where} has type {type(obj).__name__}, which cannot be stored as JSON; convert it to "
        "a number, string, list or dict first"
    )


def _dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=2, sort_keys=True)


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def _prepare_tensors(tensors: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, Mapping):
        raise TypeError(f"{what} must be a dict of name → torch.Tensor, got {type(tensors)}")
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be str, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{what}[{key!r}] must be a torch.Tensor, got {type(value).__name__}; "
                "convert with torch.as_tensor"
            )
        # safetensors needs dense, contiguous, non-aliased CPU tensors.
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out


def _decode_tensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return dict(_st_load(data))
    except Exception as exc:  # SafetensorError and friends
        raise ValueError(
            f"{path} is corrupt or truncated ({len(data)} bytes; {exc}); restore it from a "
            "backup or save it again"
        ) from exc


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` (str → str) of safetensors bytes already validated by the loader."""
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} has an unreadable safetensors header ({exc})") from exc
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has a malformed safetensors __metadata__ field")
    return {str(k): str(v) for k, v in meta.items()}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def save_model(
    path_dir: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
) -> Path:
    """Save ``tensors`` to ``path_dir/model.safetensors`` and ``metadata`` to ``model.json``.

    Creates ``path_dir`` (with parents). Metadata is converted by :func:`to_jsonable`; the keys
    ``format_version``, ``convexcnn_version`` and ``tensors_sha256`` are added (and override).
    Returns the directory.
    """
    directory = Path(path_dir)
    prepared = _prepare_tensors(tensors, "tensors")
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    meta = to_jsonable(metadata)
    blob = _st_save(prepared)
    meta.update(
        {
            "format_version": FORMAT_VERSION,
            "convexcnn_version": _package_version(),
            "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        }
    )
    text = _dumps(meta) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    # Tensors first, metadata last: model.json (with the hash) is the commit record.
    atomic_write_bytes(directory / MODEL_TENSORS, blob)
    atomic_write_text(directory / MODEL_METADATA, text)
    return directory


def load_model(path_dir: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a model saved by :func:`save_model`: ``(tensors, metadata)``.

    Raises ``FileNotFoundError`` when the directory or one of its two files is missing and
    ``ValueError`` when a file is corrupt, truncated, from a newer format, or the pair mismatches.
    """
    directory = Path(path_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    tensor_path = directory / MODEL_TENSORS
    meta_path = directory / MODEL_METADATA
    for p in (tensor_path, meta_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{directory} is not a saved model: {p.name} is missing (expected "
                f"{MODEL_TENSORS} and {MODEL_METADATA}, as written by save_model)"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path} is not valid JSON ({exc}); the file is corrupt") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{meta_path} has no integer 'format_version'; not a convexcnn model")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {version}, newer than this convexcnn supports "
            f"({FORMAT_VERSION}); upgrade convexcnn"
        )
    data = tensor_path.read_bytes()
    expected = meta.get("tensors_sha256")
    if isinstance(expected, str) and hashlib.sha256(data).hexdigest() != expected:
        # Decode first so a truncated file gets the more specific message.
        _decode_tensors(data, tensor_path)
        raise ValueError(
            f"{tensor_path} does not match {meta_path} (sha256 differs): the files come from "
            "different saves or one was modified; save the model again"
        )
    return _decode_tensors(data, tensor_path), meta


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, torch.Tensor],
    info: Mapping[str, Any],
) -> Path:
    """Atomically write ``state`` to one safetensors file with ``json.dumps(info)`` in its header.

    Creates the parent directory. Returns the path.
    """
    target = Path(path)
    prepared = _prepare_tensors(state, "state")
    if not isinstance(info, Mapping):
        raise TypeError(f"info must be a dict, got {type(info).__name__}")
    header = {
        _CHECKPOINT_KEY: json.dumps(to_jsonable(info, "info"), sort_keys=True),
        "format_version": str(FORMAT_VERSION),
    }
    blob = _st_save(prepared, metadata=header)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, blob)
    return target


def load_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load ``(state, info)`` written by :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` if missing, ``ValueError`` if corrupt, truncated or not a
    convexcnn checkpoint.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"checkpoint {target} does not exist")
    data = target.read_bytes()
    state = _decode_tensors(data, target)
    header = _header_metadata(data, target)
    if _CHECKPOINT_KEY not in header:
        raise ValueError(
            f"{target} is a safetensors file but not a convexcnn checkpoint (no "
            f"'{_CHECKPOINT_KEY}' metadata); use load_model or safetensors directly"
        )
    try:
        version = int(header.get("format_version", "1"))
    except ValueError as exc:
        raise ValueError(f"{target}: checkpoint format_version is not an integer") from exc
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{target} has format_version {version}, newer than this convexcnn supports "
            f"({FORMAT_VERSION}); upgrade convexcnn"
        )
    try:
        info = json.loads(header[_CHECKPOINT_KEY])
    except ValueError as exc:
        raise ValueError(f"{target}: checkpoint info is not valid JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise ValueError(f"{target}: checkpoint info must be a JSON object")
    return state, info


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def save_network(
    path_dir: str | os.PathLike[str], network: torch.nn.Module, metadata: Mapping[str, Any]
) -> Path:
    """Save a recovered network: its state_dict, its class and ``config()``, plus metadata.

    The module class must provide ``config()`` and ``from_config(config)``.
    """
    if not hasattr(network, "config") or not hasattr(type(network), "from_config"):
        raise NotImplementedError(
            f"saving {type(network).__name__} is not supported: it has no config()/from_config()"
        )
    cls = type(network)
    full = {
        **dict(metadata),
        "network_class": f"{cls.__module__}:{cls.__qualname__}",
        "network_config": cast(Any, network).config(),
        "network_dtype": str(next(network.parameters()).dtype).removeprefix("torch."),
    }
    state = {k: v.detach() for k, v in network.state_dict().items()}
    return save_model(path_dir, state, full)


def load_network(path_dir: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a network saved by :func:`save_network`; returns (module, metadata)."""
    import importlib

    tensors, metadata = load_model(path_dir)
    target = metadata.get("network_class")
    if not isinstance(target, str) or ":" not in target or "network_config" not in metadata:
        raise ValueError(f"{path_dir} holds tensors but no network description (model.json)")
    module_name, qualname = target.split(":", 1)
    if not module_name.startswith("convexcnn."):
        raise ValueError(f"{path_dir}: refusing to import network class {target!r}")
    cls = getattr(importlib.import_module(module_name), qualname)
    network = cls.from_config(metadata["network_config"])
    dtype = getattr(torch, metadata.get("network_dtype", "float64"))
    network = network.to(dtype)
    try:
        network.load_state_dict(tensors)
    except RuntimeError as err:
        raise ValueError(f"{path_dir}: weights do not match the saved network: {err}") from None
    network.eval()
    return network, metadata
