"""Evaluate a trained run on a labelled set: the validation metrics, per-class table, confusion matrix
and every prediction, written to one folder.

Metrics come from the same ``ClassificationMetrics`` as validation during training, so the names and
conventions (macro over all classes, zero_division=0, ECE bins) are the same.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .data.sources import read_csv, scan_folder
from .io import atomic_write_json, atomic_write_text, check_writable
from .errors import UserError
from .inference import TOP_K, check_loader_options, csv_text, load, prediction_cells, prediction_header
from .metrics import ClassificationMetrics
from .tasks import get_task

METRIC_NAMES = get_task("multiclass").metric_names()


@dataclass
class EvalResult:
    out_dir: Path
    scalars: dict                       # val/... metrics, as in training's metrics.csv
    details: dict                       # per_class, confusion_matrix, top5_acc, ece, num_samples
    errors: list[tuple[str, str]]       # unreadable images (path, reason), left out of the metrics


def default_out_dir(model: str | os.PathLike, data: str | os.PathLike) -> Path:
    """MODEL/eval-<data folder name or CSV file stem>."""
    data = Path(data)
    name = data.stem if data.suffix.lower() == ".csv" else data.resolve().name
    return Path(model) / f"eval-{name}"


def read_labelled(data: str | os.PathLike, path_column: str = "path",
                  label_column: str = "label") -> tuple[list[str], list[str]]:
    """(paths, labels) from a class-folder tree or a CSV, read as training reads them."""
    if str(data).lower().endswith(".csv"):
        paths, labels, _ = read_csv(data, path_column, label_column)
        return paths, labels
    return scan_folder(data)


def evaluate(model: str | os.PathLike, data: str | os.PathLike, out: Optional[str | os.PathLike] = None, *,
             ensemble: Sequence[str | os.PathLike] = (), force: bool = False, path_column: str = "path",
             label_column: str = "label", tta: bool = False, scales: Optional[Sequence[float]] = None,
             batch_size: int = 64, num_workers: Optional[int] = None, device: str = "auto",
             progress: bool = False) -> EvalResult:
    """Predict on the labelled set ``data`` and write metrics.json, per_class.csv, confusion_matrix.csv,
    predictions.csv (and errors.csv for unreadable images) into ``out``."""
    check_loader_options(batch_size, num_workers)
    out_dir = Path(out) if out is not None else default_out_dir(model, data)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UserError(f"evaluation folder '{out_dir}' already exists; pass --force to overwrite it or "
                        "choose another --out.")
    check_writable(out_dir, "evaluation folder", "choose another --out")  # before predicting, not after
    predictor = load(model, ensemble, device)
    if predictor.info.task != "multiclass":
        raise UserError(f"imgcls evaluate scores multiclass runs so far, and '{model}' is a {predictor.info.task} "
                        "run; use 'imgcls predict' on the images and compare with the labels.")
    paths, labels = read_labelled(data, path_column, label_column)
    classes = predictor.classes
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise UserError(f"label(s) {shown} of '{data}' are not classes of the model ({', '.join(classes)}); "
                        "fix the labels or evaluate a model trained on those classes.")
    code = {c: k for k, c in enumerate(classes)}

    res = predictor.predict_files(paths, batch_size=batch_size, num_workers=num_workers, tta=tta,
                                  scales=scales, progress=progress)
    errors = [(paths[i], reason) for i, reason in sorted(res.errors)]
    if not res.ok:
        raise UserError(f"none of the {len(paths)} images of '{data}' could be read; check them with "
                        "'imgcls check-data'.")
    target = torch.tensor([code[labels[i]] for i in res.ok])
    # Probabilities (averaged over TTA views and ensemble members) become logits whose softmax gives
    # them back; the clamp keeps a probability that underflowed to 0 finite (float32 tiny, ~1e-38).
    logits = res.probs.clamp_min(torch.finfo(torch.float32).tiny).log()
    metrics = ClassificationMetrics(len(classes), classes)
    # val/loss here is plain cross-entropy (no label smoothing or class weights of the training loss).
    metrics.update(logits, target, F.nll_loss(logits, target, reduction="sum"))
    scalars, details = metrics.compute(), metrics.details()

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "metrics.json", {
        "model": str(model), "ensemble": [str(e) for e in ensemble], "data": str(data), "tta": bool(tta),
        "tta_scales": list(scales) if scales else None,
        **{k: _json_float(scalars[k]) for k in METRIC_NAMES if k in scalars},
        "top5_acc": details["top5_acc"], "ece": details["ece"], "num_samples": details["num_samples"],
        "unreadable": len(errors), "loss": "cross-entropy of the predicted probabilities",
    })
    worst = sorted(details["per_class"], key=lambda r: (r["f1"], r["recall"], code[r["class"]]))
    atomic_write_text(out_dir / "per_class.csv", csv_text(
        ["class", "precision", "recall", "f1", "support"],
        [[r["class"], f"{r['precision']:.6g}", f"{r['recall']:.6g}", f"{r['f1']:.6g}", r["support"]]
         for r in worst]))
    atomic_write_text(out_dir / "confusion_matrix.csv", csv_text(
        ["true\\pred", *classes], [[c, *row] for c, row in zip(classes, details["confusion_matrix"])]))
    cells = prediction_cells(res.probs, classes, TOP_K)
    atomic_write_text(out_dir / "predictions.csv", csv_text(
        ["path", "label", *prediction_header(classes)],
        [[paths[i], labels[i], *cells[row]] for row, i in enumerate(res.ok)]))
    err_file = out_dir / "errors.csv"
    if errors:
        atomic_write_text(err_file, csv_text(["path", "problem"], errors))
        warnings.warn(f"{len(errors)} unreadable image(s) left out of the metrics; listed in {err_file}.",
                      stacklevel=2)
    elif err_file.exists():
        err_file.unlink()
    return EvalResult(out_dir, scalars, details, errors)


def _json_float(v: float):
    return None if isinstance(v, float) and math.isnan(v) else v


def format_table(result: EvalResult, max_classes: int = 10) -> str:
    """A compact text summary: the metrics on two lines, then the per-class table worst first."""
    s, d = result.scalars, result.details

    def fmt(v):
        return "nan" if v is None or math.isnan(v) else f"{v:.4f}"

    lines = ["  ".join(f"{k} {fmt(s[k])}" for k in METRIC_NAMES if k in s),
             f"top5_acc {fmt(d['top5_acc'])}  ece {fmt(d['ece'])}  images {d['num_samples']}"]
    rows = sorted(d["per_class"], key=lambda r: (r["f1"], r["recall"]))[:max_classes]
    width = max(5, *(len(r["class"]) for r in rows))
    lines.append(f"{'class':<{width}}  precision  recall      f1  support   (worst first)")
    for r in rows:
        lines.append(f"{r['class']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}")
    if len(d["per_class"]) > max_classes:
        lines.append(f"... {len(d['per_class']) - max_classes} more in {result.out_dir / 'per_class.csv'}")
    return "\n".join(lines)
