"""The folders the engine writes and later stages read, named in one place: for now a cv folder's format.

A cv folder holds ``cv.json`` (the number of folds, those that finished training, the classes),
``folds.csv`` and one ordinary run folder per fold, ``fold-<k>``. The engine writes it (engine/cv.py);
inference, the report and the CLI open it. The format lives here, below all of them, so that readers
of a folder need not import the code that trains one.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .io import atomic_write_json

CV_FILE = "cv.json"  # marks a cv folder: its number of folds, which of them finished, the classes


def fold_dir(cv_dir: str | Path, k: int) -> Path:
    """Fold k's run folder inside a cv folder."""
    return Path(cv_dir) / f"fold-{k}"


def is_cv_dir(path: str | Path) -> bool:
    return (Path(path) / CV_FILE).is_file()


def fold_dirs(cv_dir: str | Path, finished_only: bool = True) -> list[Path]:
    """The run folders of a cv folder (those that finished training, by default), in fold order."""
    state = read_state(cv_dir)
    ks = state["finished"] if finished_only else range(state["folds"])
    return [fold_dir(cv_dir, k) for k in sorted(ks)]


def read_state(cv_dir: str | Path) -> dict:
    path = Path(cv_dir) / CV_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"'{path}' cannot be read ({e}); the cv folder is damaged, run the cv again.") from None


def write_state(cv_dir: str | Path, state: dict) -> None:
    atomic_write_json(Path(cv_dir) / CV_FILE, state)
