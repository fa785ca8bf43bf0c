"""Read a run folder's files into one object, RunData: every report kind and compare are built from it.

val_predictions.csv has the task's own columns, so it is read as the task needs it: as arrays for a
multiclass run (``RunData.predictions``), as text rows for the other task types (``RunData.rows``),
which ``label_predictions`` (multilabel) and ``value_predictions`` (regression) turn into arrays.
"""
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
    """Multiclass val_predictions.csv as arrays: integer codes in the run's class order, probabilities [N, K]."""
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
class LabelPredictions:
    """Multi-label val_predictions.csv as arrays, labels in model.json's order."""
    paths: list[str]
    truth: np.ndarray      # [N, L] bool
    decided: np.ndarray    # [N, L] bool: the run's 'pred' column (at the tuned thresholds)
    probs: np.ndarray      # [N, L] float64


@dataclass
class ValuePredictions:
    """Regression val_predictions.csv (or one regression head's columns) as arrays, in the target's unit."""
    paths: list[str]
    true: np.ndarray       # [N]
    pred: np.ndarray       # [N]

    @property
    def residual(self) -> np.ndarray:
        """prediction - truth: positive where the model says too much."""
        return self.pred - self.true


@dataclass
class RunData:
    run_dir: Path
    config: dict                      # config.yaml, nested, as written (not re-validated)
    val_metrics: dict                 # val_metrics.json: scalars and the task's details (per_class, ...)
    history: list[dict]               # metrics.csv rows as floats (NaN where blank)
    classes: list[str]                # model.json's classes (val_metrics.json's for an older run)
    model: Optional[ModelInfo] = None           # model.json (None if absent: an older multiclass run)
    env: dict = field(default_factory=dict)     # env.json ({} if absent)
    train_counts: Optional[list[int]] = None    # multiclass: per class, from split/train.csv or model.json
    val_counts: Optional[list[int]] = None      # multiclass: per class, from split/val.csv
    predictions: Optional[Predictions] = None   # multiclass: val_predictions.csv as arrays
    rows: Optional[list[dict]] = None           # other task types: val_predictions.csv rows, as text
    evaluations: list[tuple[str, dict]] = field(default_factory=list)  # (eval-* folder name, metrics.json)

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def task(self) -> str:
        return self.model.task if self.model is not None else "multiclass"

    @property
    def record(self) -> dict:
        """model.json's task record (thresholds, separator, target mean and std, bins...)."""
        return self.model.extra if self.model is not None else {}

    @property
    def monitor(self) -> str:
        """The metric that chose the best epoch, as val_metrics.json names it (older runs: model.json, config)."""
        if self.val_metrics.get("monitor"):
            return str(self.val_metrics["monitor"])
        if self.task != "multiclass":
            return self.model.monitor or "val/loss"
        return str(self.config.get("train", {}).get("monitor", "val/acc"))

    def column(self, key: str) -> np.ndarray:
        """One metrics.csv column over epochs (NaN where missing)."""
        return np.array([row.get(key, math.nan) for row in self.history], dtype=float)

    def best(self, key: str) -> float:
        """A number of val_metrics.json (the best epoch's), NaN where absent or not a number."""
        v = self.val_metrics.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

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


def read_json(path: Path) -> dict:
    """A JSON object of a run (or cv) folder; a UserError when it is unreadable or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not readable JSON ({e}); re-copy the run folder.")
    if not isinstance(obj, dict):
        raise UserError(f"'{path}' must hold a JSON object; re-copy the run folder.")
    return obj


def read_history(path: Path) -> list[dict]:
    """metrics.csv rows as floats (NaN where blank); [] when there is no such file."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]


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


def _read_rows(path: Path) -> Optional[list[dict]]:
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_multiclass(run: RunData) -> None:
    if len(run.classes) < 2 or "per_class" not in run.val_metrics or "confusion_matrix" not in run.val_metrics:
        raise UserError(f"'{run.run_dir / 'val_metrics.json'}' lacks classes, per_class or confusion_matrix; "
                        "re-copy the run folder or retrain.")


def _multiclass_views(run: RunData) -> None:
    """Images per class in training and validation: only a multiclass run's label column names one class."""
    run.train_counts = _read_counts(run.run_dir / "split" / "train.csv", run.classes)
    if run.train_counts is None and run.model is not None and run.model.train_counts:
        run.train_counts = list(run.model.train_counts)
    run.val_counts = _read_counts(run.run_dir / "split" / "val.csv", run.classes)


def load_run(run_dir: str | Path, *, need_model: bool = False) -> RunData:
    """Everything a report needs from ``run_dir``; a UserError if it is not a finished run folder (or lacks
    model.json where ``need_model``). A run without model.json is an older multiclass run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist; pass a folder written by 'imgcls train'.")
    required = (*REQUIRED, "model.json") if need_model else REQUIRED
    missing = [name for name in required if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"'{run_dir}' lacks {', '.join(missing)}; pass a run folder in which at least one "
                        "epoch finished.")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    val_metrics = read_json(run_dir / "val_metrics.json")
    history = read_history(run_dir / "metrics.csv")
    model = ModelInfo.read(run_dir / "model.json") if (run_dir / "model.json").is_file() else None
    env = read_json(run_dir / "env.json") if (run_dir / "env.json").is_file() else {}
    classes = [str(c) for c in ((model.classes if model else None) or val_metrics.get("classes") or [])]
    run = RunData(run_dir=run_dir, config=config, val_metrics=val_metrics, history=history, classes=classes,
                  model=model, env=env)
    multiclass = run.task == "multiclass"
    if multiclass:
        _check_multiclass(run)
        _multiclass_views(run)
    for folder in sorted(run_dir.glob("eval-*")):
        if (folder / "metrics.json").is_file():
            run.evaluations.append((folder.name, read_json(folder / "metrics.json")))
    if multiclass:
        run.predictions = _read_predictions(run_dir / "val_predictions.csv", classes)
    else:
        run.rows = _read_rows(run_dir / "val_predictions.csv")
    return run


def _columns(run: RunData, needed: list[str]) -> list[dict]:
    rows = run.rows or []
    if rows and not set(needed) <= set(rows[0]):
        raise UserError(f"'{run.run_dir / 'val_predictions.csv'}' lacks the columns "
                        f"{', '.join(c for c in needed if c not in rows[0])} of a {run.task} run; "
                        "re-copy the run folder.")
    return rows


def label_predictions(run: RunData) -> Optional[LabelPredictions]:
    """A multi-label run's val_predictions.csv as arrays; None without the file."""
    if run.rows is None:
        return None
    labels = list(run.model.classes)
    rows = _columns(run, ["path", "label", "pred", *[f"prob_{c}" for c in labels]])
    sep = str(run.record.get("separator", "|"))
    code = {c: j for j, c in enumerate(labels)}

    def matrix(column: str) -> np.ndarray:
        m = np.zeros((len(rows), len(labels)), dtype=bool)
        for i, r in enumerate(rows):
            for tag in (t.strip() for t in r[column].split(sep)):
                if tag and tag not in code:
                    raise UserError(f"'{run.run_dir / 'val_predictions.csv'}' names label '{tag}' that the run "
                                    "does not have; re-copy the run folder.")
                if tag:
                    m[i, code[tag]] = True
        return m

    probs = np.array([[float(r[f"prob_{c}"]) for c in labels] for r in rows], dtype=np.float64)
    return LabelPredictions([r["path"] for r in rows], matrix("label"), matrix("pred"),
                            probs.reshape(len(rows), len(labels)))


def value_predictions(run: RunData) -> Optional[ValuePredictions]:
    """A regression run's val_predictions.csv as arrays; None without the file."""
    if run.rows is None:
        return None
    rows = _columns(run, ["path", "label", "value"])
    return ValuePredictions([r["path"] for r in rows], np.array([float(r["label"]) for r in rows]),
                            np.array([float(r["value"]) for r in rows]))
