"""``last.pt``: the resumable state of a run, written atomically, loaded without unsafe unpickling.

It holds only tensors and plain values (see ``Run.state_dict``), so it loads with ``weights_only=True``.
The shareable model (best.safetensors + model.json) is imgcls.models.modelinfo's.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

from ..errors import UserError, first_sentence
from ..io import atomic_write_bytes


def load_error_reason(e: BaseException) -> str:
    """Why torch.load refused a file, quoted whole: for bytes that are no pickle, what its weights-only
    unpickler found ('Unsupported operand 103'), not the first sentence of torch's advice; otherwise the
    message's first sentence (some, e.g. from an empty file, have none: then the error's type)."""
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
    return found.group(1).strip().rstrip(".") if found else first_sentence(e)


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
        if found is None:  # not a refused object: the bytes themselves are not a checkpoint
            raise UserError(f"'{path}' is damaged and cannot be read (not a checkpoint file: "
                            f"{load_error_reason(e)}); restore it from a backup or start a new run.")
        raise UserError(f"'{path}' holds objects other than tensors and plain values and was not loaded "
                        f"(unsafe pickle refused: {found.group(0)}); use a last.pt written by imgcls.")
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"'{path}' is damaged and cannot be read ({load_error_reason(e)}); "
                        "restore it from a backup or start a new run.")
