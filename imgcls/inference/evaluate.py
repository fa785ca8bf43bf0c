"""Evaluate a trained run on a labelled set: the validation metrics, the task's tables (per class and
confusion matrix; per label; per head and the combined class; binned confusion) and every
prediction, written to one folder.

Labels are read as the run read its training data (its config.yaml: label column or columns,
separator, heads, path pattern). Metrics come from the task's own validation metrics, so the names
and conventions are those of training; multi-label decisions use the thresholds stored in the model
record (not tuned again on the evaluated data).
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.sources import read_csv, scan_folder
from ..io import atomic_write_json, atomic_write_text, check_writable
from ..errors import UserError
from .predictor import TOP_K, InferenceOptions, check_loader_options, csv_text, load
from ..tasks import get_task

METRIC_NAMES = get_task("multiclass").metric_names()


@dataclass(frozen=True, kw_only=True)
class EvalOptions(InferenceOptions):
    """``imgcls evaluate``'s options: the inference ones, and how the labelled set is read."""
    force: bool = False                 # write into an evaluation folder that already holds files
    path_column: Optional[str] = None   # path column of a CSV (None: the run's data.path_column)
    label_column: Optional[str] = None  # label column of a CSV (None: the run's, as it trained)


@dataclass
class EvalResult:
    out_dir: Path
    scalars: dict                       # val/... metrics, as in training's metrics.csv
    details: dict                       # per_class, confusion_matrix, top5_acc, ece, num_samples
    errors: list[tuple[str, str]]       # unreadable images (path, reason), left out of the metrics
    files: list[str] = field(default_factory=list)  # the file names written into out_dir, in order


def default_out_dir(model: str | os.PathLike, data: str | os.PathLike) -> Path:
    """MODEL/eval-<data folder name or CSV file stem>."""
    data = Path(data)
    name = data.stem if data.suffix.lower() == ".csv" else data.resolve().name
    return Path(model) / f"eval-{name}"


def _run_config(model: str | os.PathLike):
    """The training config of ``model`` (a run folder, or a cross-validation folder's first fold), or
    None for a folder holding only model.json and the weights."""
    from ..config import load_config
    from ..runfolder import fold_dirs, is_cv_dir
    run = Path(model)
    if is_cv_dir(run):
        run = next(iter(fold_dirs(run)), run)
    return load_config(run / "config.yaml") if (run / "config.yaml").is_file() else None


def read_labelled(data: str | os.PathLike, cfg=None, path_column: Optional[str] = None,
                  label_column: Optional[str] = None) -> tuple[list[str], list]:
    """(paths, labels as written) of a class-folder tree or a CSV, read as the run ``cfg`` read its
    training data (its label column or columns, separator, heads, path pattern); without a config,
    a class-folder tree or a path,label CSV."""
    is_csv = str(data).lower().endswith(".csv")
    if cfg is None:
        if is_csv:
            paths, labels, _ = read_csv(data, path_column or "path", label_column or "label")
            return paths, labels
        return scan_folder(data)
    from ..data.build import DataSources, read_labelled as read_source
    src = DataSources.from_config(cfg, root=None if is_csv else str(data), csv=str(data) if is_csv else None)
    changes = {k: v for k, v in (("path_column", path_column), ("label_column", label_column)) if v}
    if is_csv:
        changes["path_labels"] = None  # a CSV names its labels; the path pattern reads folders
    return read_source(replace(src, group_column=None, **changes))


def _targets(task, labels: list, classes: Sequence[str], data) -> list:
    if task.name == "multiclass":
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
            raise UserError(f"label(s) {shown} of '{data}' are not classes of the model ({', '.join(classes)}); "
                            "fix the labels or evaluate a model trained on those classes.")
    return task.encode(labels, classes)


def evaluate(model: str | os.PathLike, data: str | os.PathLike, out: Optional[str | os.PathLike] = None,
             options: EvalOptions = EvalOptions()) -> EvalResult:
    """Predict on the labelled set ``data`` and write metrics.json, predictions.csv and the task's
    tables (per_class.csv and confusion_matrix.csv; per_label.csv for multi-label) into ``out``
    (and errors.csv for unreadable images). Labels are read as the run read its training data;
    ``options`` are the command's flags, e.g. ``EvalOptions(tta=True, batch_size=32)``."""
    o = options
    check_loader_options(o.batch_size, o.num_workers)
    out_dir = Path(out) if out is not None else default_out_dir(model, data)
    if out_dir.exists() and any(out_dir.iterdir()) and not o.force:
        raise UserError(f"evaluation folder '{out_dir}' already exists; pass --force to overwrite it or "
                        "choose another --out.")
    check_writable(out_dir, "evaluation folder", "choose another --out")  # before predicting, not after
    predictor = load(model, o.ensemble, o.device)
    task, classes = predictor.info.task_type, predictor.classes
    paths, labels = read_labelled(data, _run_config(model), o.path_column, o.label_column)
    targets = _targets(task, labels, classes, data)

    res = predictor.predict_files(paths, batch_size=o.batch_size, num_workers=o.num_workers, tta=o.tta,
                                  scales=o.scales, progress=o.progress)
    errors = [(paths[i], reason) for i, reason in sorted(res.errors)]
    if not res.ok:
        raise UserError(f"none of the {len(paths)} images of '{data}' could be read; check them with "
                        "'imgcls check-data'.")
    scalars, details = _score(task, classes, res.probs, [targets[i] for i in res.ok])

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "metrics.json", {
        "model": str(model), "ensemble": [str(e) for e in o.ensemble], "data": str(data), "tta": bool(o.tta),
        "tta_scales": list(o.scales) if o.scales else None, "task": task.name,
        **{k: _json_float(v) for k, v in scalars.items()},
        **({"top5_acc": details["top5_acc"], "ece": details["ece"]} if task.name == "multiclass" else {}),
        "num_samples": len(res.ok), "unreadable": len(errors),
        "loss": ("cross-entropy of the predicted probabilities" if task.name == "multiclass" else
                 "not computed (the training loss needs the training options)"),
    })
    files = ["metrics.json", *_write_tables(out_dir, task, classes, details), "predictions.csv"]
    label_texts = [task.label_text(targets[i], classes) for i in res.ok]
    atomic_write_text(out_dir / "predictions.csv", csv_text(
        task.prediction_header(classes, True),
        task.prediction_rows([paths[i] for i in res.ok], res.probs, classes, label_texts, TOP_K)))
    err_file = out_dir / "errors.csv"
    if errors:
        atomic_write_text(err_file, csv_text(["path", "problem"], errors))
        warnings.warn(f"{len(errors)} unreadable image(s) left out of the metrics; listed in {err_file}.",
                      stacklevel=2)
    elif err_file.exists():
        err_file.unlink()
    return EvalResult(out_dir, scalars, details, errors, files + (["errors.csv"] if errors else []))


def _score(task, classes: Sequence[str], probs: torch.Tensor, targets: list) -> tuple[dict, dict]:
    """The task's validation metrics on averaged probabilities (TTA views, ensemble members)."""
    metrics = task.scoring_metrics(classes)
    target = task.target_tensor(targets, classes)
    # val/loss of a multiclass model: plain cross-entropy (no label smoothing or class weights of the
    # training loss); the other tasks' training losses need their options, so they have none here.
    loss = F.nll_loss(task.raw_outputs(probs), target, reduction="sum") if task.name == "multiclass" else None
    metrics.update(probs, target, loss)
    scalars = {k: v for k, v in metrics.compute().items()
               if not (k == "val/loss" and isinstance(v, float) and math.isnan(v))}
    return scalars, metrics.details()


def _classification_tables(out_dir: Path, details: dict, stem: str = "") -> list[str]:
    """per_class.csv (worst F1 first) and confusion_matrix.csv (rows = true) of one classification."""
    names = details["classes"]
    code = {c: k for k, c in enumerate(names)}
    worst = sorted(details["per_class"], key=lambda r: (r["f1"], r["recall"], code[r["class"]]))
    atomic_write_text(out_dir / f"{stem}per_class.csv", csv_text(
        ["class", "precision", "recall", "f1", "support"],
        [[r["class"], f"{r['precision']:.6g}", f"{r['recall']:.6g}", f"{r['f1']:.6g}", r["support"]]
         for r in worst]))
    atomic_write_text(out_dir / f"{stem}confusion_matrix.csv", csv_text(
        ["true\\pred", *names], [[c, *row] for c, row in zip(names, details["confusion_matrix"])]))
    return [f"{stem}per_class.csv", f"{stem}confusion_matrix.csv"]


def _write_tables(out_dir: Path, task, classes: Sequence[str], details: dict) -> list[str]:
    """The task's breakdown: per class (multiclass; per head and the combined class for multi-head),
    per label (multi-label), the binned confusion matrix (regression with bins)."""
    if task.name == "multiclass":
        return _classification_tables(out_dir, details)
    if task.name == "multilabel":
        atomic_write_text(out_dir / "per_label.csv", csv_text(
            ["label", "precision", "recall", "f1", "support", "ap", "threshold"],
            [[r["label"], f"{r['precision']:.6g}", f"{r['recall']:.6g}", f"{r['f1']:.6g}", r["support"],
              "" if r["ap"] is None else f"{r['ap']:.6g}", f"{r['threshold']:.6g}"] for r in details["per_label"]]))
        return ["per_label.csv"]
    if task.name == "regression" and "binned_confusion_matrix" in details:
        names = details["bin_names"]
        atomic_write_text(out_dir / "binned_confusion_matrix.csv", csv_text(
            ["true\\pred", *names], [[c, *row] for c, row in zip(names, details["binned_confusion_matrix"])]))
        return ["binned_confusion_matrix.csv"]
    written = []
    if task.name == "multihead":
        for name, d in details["heads"].items():
            if "per_class" in d:
                written += _classification_tables(out_dir, d, f"{name}_")
        if "combined" in details:
            written += _classification_tables(out_dir, details["combined"], "combined_")
    return written


def _json_float(v: float):
    return None if isinstance(v, float) and math.isnan(v) else v


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _worst_rows(rows: list[dict], key: str, max_rows: int, more: str) -> list[str]:
    """A per-class (or per-label) table, worst F1 first, at most ``max_rows`` rows."""
    shown = sorted(rows, key=lambda r: (r["f1"], r["recall"]))[:max_rows]
    width = max(5, *(len(str(r[key])) for r in shown))
    lines = [f"{key:<{width}}  precision  recall      f1  support   (worst first)"]
    lines += [f"{str(r[key]):<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}"
              for r in shown]
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more in {more}")
    return lines


def format_table(result: EvalResult, max_classes: int = 10) -> str:
    """A compact text summary: the metrics, then the per-class (per-label) table worst first."""
    s, d = result.scalars, result.details
    if "per_class" in d and "top5_acc" in d:  # multiclass
        lines = ["  ".join(f"{k} {_fmt(s[k])}" for k in METRIC_NAMES if k in s),
                 f"top5_acc {_fmt(d['top5_acc'])}  ece {_fmt(d['ece'])}  images {d['num_samples']}"]
        return "\n".join(lines + _worst_rows(d["per_class"], "class", max_classes, result.out_dir / "per_class.csv"))
    items = [f"{k} {_fmt(v)}" for k, v in s.items()]
    lines = ["  ".join(items[i:i + 5]) for i in range(0, len(items), 5)]
    if "per_label" in d:
        lines += _worst_rows(d["per_label"], "label", max_classes, result.out_dir / "per_label.csv")
    if "combined" in d:
        lines += _worst_rows(d["combined"]["per_class"], "class", max_classes,
                             result.out_dir / "combined_per_class.csv")
    return "\n".join(lines)
