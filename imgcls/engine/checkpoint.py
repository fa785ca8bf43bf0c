"""Atomic files, the resumable ``last.pt`` and the shareable ``best.safetensors`` + ``model.json``.

Every file a later step reads is written to a temporary file in the same folder, fsynced,
then renamed over the old one: a crash at any moment leaves the previous good file.
``last.pt`` holds only tensors and plain values, so it loads with ``weights_only=True``.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import UserError

# Test hook: called with a label at moments inside a save, so tests can kill there cheaply.
_SAVE_HOOK: Optional[Callable[[str], None]] = None


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (some, e.g. from an empty file, have none)."""
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


def _hook(label: str) -> None:
    if _SAVE_HOOK is not None:
        _SAVE_HOOK(label)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data[: len(data) // 2])
            _hook(f"write:{path.name}")
            f.write(data[len(data) // 2:])
            f.flush()
            os.fsync(f.fileno())
        _hook(f"rename:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files that a killed atomic write left in ``folder``; returns them."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink()
    return stale


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- RNG state as plain values

def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- last.pt

def save_last(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_last(path: Path) -> dict:
    """Load ``last.pt`` with ``weights_only=True``; never falls back to unsafe unpickling."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist; resume needs the last.pt that 'imgcls train' keeps in "
                        "the run folder (written before the first epoch and after each one).")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message goes on about loading the file unsafely; keep only what was refused.
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(e))
        what = found.group(0) if found else _first_line(e)
        raise UserError(f"'{path}' holds objects other than tensors and plain values and was not loaded "
                        f"(unsafe pickle refused: {what}); use a last.pt written by imgcls.")
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"'{path}' is damaged and cannot be read ({_first_line(e)}); "
                        "restore it from a backup or start a new run.")


# ---------------------------------------------------------------- best.safetensors + model.json

MODEL_JSON_KEYS = {  # key -> type; validated on load
    "format": int, "architecture": str, "classes": list, "channels": int, "image_size": int,
    "resize": int, "crop_pct": float, "mean": list, "std": list, "augment": str, "allows_flip": bool,
    "epoch": int, "monitor": dict, "train_counts": list,
}


def save_weights(path: Path, model: torch.nn.Module) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(state))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist; point to a run folder that holds best.safetensors.")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"weights file '{path}' is truncated or malformed ({_first_line(e)}); "
                        "re-copy it or retrain.")


def read_model_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"'{path}' does not exist; pass a run folder written by 'imgcls train'.")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e}); re-copy the run folder.")
    if not isinstance(meta, dict):
        raise UserError(f"'{path}' must hold a JSON object; re-copy the run folder.")
    for key, tp in MODEL_JSON_KEYS.items():
        if key not in meta:
            raise UserError(f"'{path}' lacks the key '{key}'; re-copy the run folder or retrain.")
        ok = isinstance(meta[key], tp) or (tp is float and isinstance(meta[key], int))
        if not ok or (tp is int and isinstance(meta[key], bool)):
            raise UserError(f"'{path}' key '{key}' must be {tp.__name__}, got {meta[key]!r}.")
    if len(meta["mean"]) != meta["channels"] or len(meta["std"]) != meta["channels"]:
        raise UserError(f"'{path}' has mean/std of another length than channels={meta['channels']}.")
    if len(meta["classes"]) < 2:
        raise UserError(f"'{path}' names {len(meta['classes'])} class(es); a classifier has at least 2.")
    return meta


def load_run_model(run_dir: Path, weights: str = "best.safetensors") -> tuple[torch.nn.Module, dict]:
    """Rebuild a run's model from ``model.json`` + safetensors weights (no pickle); returns (model in eval mode, meta).

    The weights must fit the architecture and class count that ``model.json`` names exactly.
    """
    from ..models import create_model

    run_dir = Path(run_dir)
    meta = read_model_json(run_dir / "model.json")
    state = load_weights(run_dir / weights)
    model = create_model(meta["architecture"], len(meta["classes"]), meta["channels"])
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        head_w = f"{cfg.get('classifier')}.weight"  # timm names the output layer in pretrained_cfg
        if head_w in wrong and state[head_w].shape[0] != len(meta["classes"]):
            raise UserError(f"'{run_dir / 'model.json'}' names {len(meta['classes'])} classes but "
                            f"'{run_dir / weights}' has an output layer for {state[head_w].shape[0]}; "
                            "re-copy the run folder so both files come from the same run.")
        first = (wrong + missing + unexpected)[0]
        raise UserError(f"'{run_dir / weights}' does not fit the '{meta['architecture']}' model described by "
                        f"'{run_dir / 'model.json'}' (first mismatch: '{first}'); re-copy the run folder.")
    model.load_state_dict(state)
    return model.eval(), meta
