"""Files that never end up half-written: atomic writes, safetensors weights and JSON documents."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    A crash (or ``kill -9``) mid-write leaves the previous file intact, because ``os.replace``
    within one folder is atomic.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes files private (0600); a run's files are ordinary ones
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write weights as safetensors, atomically (contiguous CPU copies, as the format requires)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file; unlike pickle, this cannot execute code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} (expected a .safetensors file)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors weights file: {err}") from err


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file's header, without reading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as weights:
            return weights.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors weights file: {err}") from err


# PyTorch's pickle-based weight files; read with weights_only=True, never as plain pickles.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")


def load_pickle_weights_only(path: str | os.PathLike, what: str = "PyTorch file") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, so a hostile pickle cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, ImportError) as err:
        raise ValueError(
            f"{path} is not a readable {what}: refused by the weights-only loader, which loads tensors and plain "
            f"values but never code ({refusal_reason(err)})"
        ) from err


def refusal_reason(err: BaseException) -> str:
    """The line of a weights-only loading error that says what was refused.

    torch's message goes on for lines about how to load the file unsafely; a user should see what was refused.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    why = next((line.split("error:", 1)[1] for line in lines if line.startswith("WeightsUnpickler error:")), lines[0])
    return why.strip().split(". ")[0]


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors``, or from ``.pt``/``.pth``/``.bin`` through the weights-only loader."""
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return load_safetensors(path)
    state = load_pickle_weights_only(path, "weights file")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path} holds no state dict (a mapping of names to tensors), got {type(state).__name__}")
    return state


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON document, naming the file in any error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path} (expected a JSON file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
