"""Read a run folder's files into one object; the report and compare are built from nothing else."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from ..errors import UserError
from ..models.modelinfo import ModelInfo

REQUIRED = ("config.yaml", "metrics.csv", "val_metrics.json")


@dataclass
class Predictions:
    """val_predictions.csv as arrays: integer codes in the run's class order, probabilities [N, K]."""
    paths: list[str]
    labels: np.ndarray     # [N] int
    preds: np.ndarray      # [N] int (the run's argmax of the logits)
    probs: np.ndarray      # [N, K] float64

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.preds

    @property
    def confidence(self) -> np.ndarray:
        """Max softmax probability per image."""
        return self.probs.max(axis=1)


@dataclass
class RunData:
    run_dir: Path
    config: dict                      # config.yaml, nested, as written (not re-validated)
    val_metrics: dict                 # val_metrics.json: scalars, per_class, confusion_matrix, ece...
    history: list[dict]               # metrics.csv rows as floats (NaN where blank)
    classes: list[str]
    model: Optional[ModelInfo] = None           # model.json (None if absent)
    env: dict = field(default_factory=dict)     # env.json ({} if absent)
    train_counts: Optional[list[int]] = None    # from split/train.csv
    val_counts: Optional[list[int]] = None      # from split/val.csv
    predictions: Optional[Predictions] = None
    evaluations: list[tuple[str, dict]] = field(default_factory=list)  # (eval-* folder name, metrics.json)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def monitor(self) -> str:
        return str(self.val_metrics.get("monitor") or self.config.get("train", {}).get("monitor", "val/acc"))

    def column(self, key: str) -> np.ndarray:
        """One metrics.csv column over epochs (NaN where missing)."""
        return np.array([row.get(key, math.nan) for row in self.history], dtype=float)

    def resolve_image(self, path: str) -> Optional[Path]:
        """An image path from the split/predictions CSVs as it exists here, or None (e.g. run copied elsewhere)."""
        p = Path(path)
        for candidate in (p, self.run_dir / p):
            if candidate.is_file():
                return candidate
        return None


def _float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not readable JSON ({e}); re-copy the run folder.")
    if not isinstance(obj, dict):
        raise UserError(f"'{path}' must hold a JSON object; re-copy the run folder.")
    return obj


def _read_counts(path: Path, classes: list[str]) -> Optional[list[int]]:
    if not path.is_file():
        return None
    counts = dict.fromkeys(classes, 0)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("label") in counts:
                counts[row["label"]] += 1
    return [counts[c] for c in classes]


def _read_predictions(path: Path, classes: list[str]) -> Optional[Predictions]:
    if not path.is_file():
        return None
    code = {c: i for i, c in enumerate(classes)}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = list(reader)
    prob_cols = [f"prob_{c}" for c in classes]
    if header is None or not {"path", "label", "pred", *prob_cols} <= set(header):
        raise UserError(f"'{path}' does not have the columns path,label,pred,prob_<class> for the run's "
                        f"{len(classes)} classes; re-copy the run folder.")
    col = {name: header.index(name) for name in ("path", "label", "pred", *prob_cols)}
    try:
        labels = np.array([code[r[col["label"]]] for r in rows], dtype=np.int64)
        preds = np.array([code[r[col["pred"]]] for r in rows], dtype=np.int64)
    except KeyError as e:
        raise UserError(f"'{path}' names class {e} that the run does not have; re-copy the run folder.")
    probs = np.array([[float(r[col[c]]) for c in prob_cols] for r in rows], dtype=np.float64).reshape(
        len(rows), len(classes))
    return Predictions([r[col["path"]] for r in rows], labels, preds, probs)


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report needs from ``run_dir``; a UserError if it is not a finished run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist; pass a folder written by 'imgcls train'.")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"'{run_dir}' lacks {', '.join(missing)}; pass a run folder in which at least one "
                        "epoch finished.")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    val_metrics = _read_json(run_dir / "val_metrics.json")
    with open(run_dir / "metrics.csv", newline="") as f:
        history = [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    model = ModelInfo.read(run_dir / "model.json") if (run_dir / "model.json").is_file() else None
    env = _read_json(run_dir / "env.json") if (run_dir / "env.json").is_file() else {}
    classes = [str(c) for c in ((model.classes if model else None) or val_metrics.get("classes") or [])]
    if len(classes) < 2 or "per_class" not in val_metrics or "confusion_matrix" not in val_metrics:
        raise UserError(f"'{run_dir / 'val_metrics.json'}' lacks classes, per_class or confusion_matrix; "
                        "re-copy the run folder or retrain.")
    train_counts = _read_counts(run_dir / "split" / "train.csv", classes)
    if train_counts is None and model is not None and model.train_counts:
        train_counts = list(model.train_counts)
    evaluations = []
    for folder in sorted(run_dir.glob("eval-*")):
        if (folder / "metrics.json").is_file():
            evaluations.append((folder.name, _read_json(folder / "metrics.json")))
    return RunData(
        run_dir=run_dir, config=config, val_metrics=val_metrics, history=history, classes=classes,
        model=model, env=env, train_counts=train_counts,
        val_counts=_read_counts(run_dir / "split" / "val.csv", classes),
        predictions=_read_predictions(run_dir / "val_predictions.csv", classes), evaluations=evaluations,
    )
