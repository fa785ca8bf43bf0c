"""Cross-validation: K ordinary runs in one cv folder, one per fold, and what they say together.

``cross_validate(cfg, folds=K)`` makes the folds once (stratified by label, grouped when the data has a
group: scikit-learn's ``StratifiedGroupKFold``, see ``imgcls.data.folds``), writes them to
``CV_DIR/folds.csv``, and trains ``CV_DIR/fold-<k>`` with the user's config plus ``data.folds_csv`` and
``data.fold=k``: an ordinary run folder every tool of imgcls opens (and ``imgcls train`` can redo one
fold from its config.yaml). Then:

* ``oof_predictions.csv``: the rows of every fold's ``val_predictions.csv`` plus a ``fold`` column, so
  every image appears exactly once, predicted by the one model that did not train on it;
* ``cv_summary.json``: each fold's metrics at its best epoch, their mean and standard deviation
  (population std, ddof=0, over the folds that ran), and the metrics of the out-of-fold predictions.
  Each fold's best epoch was chosen on its own validation data, so the OOF metrics are slightly
  optimistic, like any best-epoch number.

``resume_cv(CV_DIR)`` goes on: finished folds are kept, a killed fold resumes from its ``last.pt``.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..config import Config, to_yaml
from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text, csv_text
# The cv folder's format sits below the engine, so inference and the report read it without importing this.
from ..runfolder import fold_dir, write_state


@dataclass
class CVResult:
    cv_dir: Path
    fold_dirs: list[Path]       # the folds that ran, in order
    summary: dict               # what cv_summary.json holds


def parse_only(text: Optional[str], folds: int) -> Optional[list[int]]:
    """``--only 0,2`` -> [0, 2], each checked against the number of folds."""
    if text is None:
        return None
    try:
        only = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--only takes fold numbers such as 0,2, got '{text}'.") from None
    bad = [k for k in only if not 0 <= k < folds]
    if bad or not only:
        raise UserError(f"--only {text}: folds are numbered 0 to {folds - 1}; pick among them.")
    return only


def check_cv_config(cfg: Config, folds: int) -> None:
    d = cfg.data
    if d.val_root or d.val_csv:
        raise UserError("imgcls cv makes its own validation folds, but data.val_root/data.val_csv is set; remove "
                        "it (or merge that data into the training data).")
    if d.folds_csv is not None:
        raise UserError("imgcls cv writes data.folds_csv and data.fold itself; remove them from the config.")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise UserError(f"--folds must be a whole number of at least 2, got {folds!r}.")
    if not (d.root or d.csv):
        raise UserError("imgcls cv needs data: set data.root (class folders, or a path pattern) or data.csv.")


def create_cv_folder(cfg: Config, folds: int, log: Callable[[str], None]):
    """Make the folds and the cv folder (``run.dir``, else ``run.root/<run.name>-cv-<n>``) with
    folds.csv, config.yaml (data paths absolute) and cv.json; returns (cv_dir, its lock, the config)."""
    from ..data.build import DataSources, read_samples
    from ..data.folds import make_folds, write_folds_csv
    from .build import absolute_data_paths, pin_weights
    from .rundir import RunLock, create_run_dir
    from ..tasks import get_task

    check_cv_config(cfg, folds)
    cfg = absolute_data_paths(cfg)
    cfg, _ = pin_weights(cfg, log)  # one hub revision for every fold (and resume_cv), recorded in config.yaml
    task = get_task(cfg.task.type).from_config(cfg)
    samples, classes, column = read_samples(DataSources.from_config(cfg, cfg.data.root, cfg.data.csv), task)
    fold_of = make_folds(folds, cfg.train.seed, groups=samples.groups, **task.fold_targets(samples.labels))
    cv_dir = create_run_dir(cfg.run.dir, cfg.run.root, f"{cfg.run.name}-cv")
    lock = RunLock(cv_dir).acquire()
    write_folds_csv(cv_dir / "folds.csv", samples.paths, fold_of, samples.groups)
    atomic_write_text(cv_dir / "config.yaml", to_yaml(cfg))
    write_state(cv_dir, {"folds": folds, "finished": [], "classes": classes})
    how = f"grouped by '{column}'" if column else "not grouped"
    sizes = np.bincount(np.asarray(fold_of), minlength=folds).tolist()
    log(f"cv: {folds} folds of {len(samples)} images ({', '.join(map(str, sizes))}), stratified by label, "
        f"{how}; folds in {cv_dir / 'folds.csv'}")
    return cv_dir, lock, cfg


def fold_config(cfg: Config, cv_dir: Path, k: int) -> Config:
    """Fold k's run: the cv's config, validated on fold k of folds.csv, in CV_DIR/fold-k."""
    return cfg.replace(**{"data.folds_csv": str(cv_dir / "folds.csv"), "data.fold": k,
                          "run.dir": str(fold_dir(cv_dir, k))})


# ---------------------------------------------------------------- summary and out-of-fold predictions

def summarise(cv_dir: Path, dirs: Sequence[Path], complete: bool) -> dict:
    """cv_summary.json (and oof_predictions.csv when every fold has run): per-fold best metrics,
    mean and std over folds, and the out-of-fold metrics."""
    per_fold = {}
    for d in dirs:
        vm = json.loads((d / "val_metrics.json").read_text())
        per_fold[d.name] = {k: v for k, v in vm.items() if k.startswith(("val/", "train/")) and _is_number(v)}
    names = [k for k in next(iter(per_fold.values()), {})]
    mean = {k: float(np.mean([f[k] for f in per_fold.values() if k in f])) for k in names}
    std = {k: float(np.std([f[k] for f in per_fold.values() if k in f])) for k in names}
    summary = {"folds": per_fold, "mean": mean, "std": std, "oof": None,
               "note": "each fold's best epoch was chosen on its own validation data"}
    if complete:
        summary["oof"] = write_oof(cv_dir, dirs)
    atomic_write_json(cv_dir / "cv_summary.json", summary)
    return summary


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def write_oof(cv_dir: Path, dirs: Sequence[Path]) -> dict:
    """oof_predictions.csv from the folds' val_predictions.csv, and the metrics computed on it."""
    header, rows = None, []
    for d in dirs:
        with open(d / "val_predictions.csv", newline="") as f:
            reader = csv.reader(f)
            h = next(reader)
            if header is not None and h != header:
                raise UserError(f"'{d / 'val_predictions.csv'}' has other columns than the other folds; retrain it.")
            header = h
            rows += [r + [d.name.split("-")[-1]] for r in reader]
    seen = [r[0] for r in rows]
    if len(set(seen)) != len(seen):
        raise UserError(f"an image is in two folds' validation data ({len(seen) - len(set(seen))} repeat(s)); "
                        f"the folds of '{cv_dir / 'folds.csv'}' overlap; run the cv again.")
    atomic_write_text(cv_dir / "oof_predictions.csv", csv_text(header + ["fold"], rows))
    from ..models.modelinfo import ModelInfo
    return oof_metrics(header, rows, ModelInfo.read(dirs[0] / "model.json"))


def oof_metrics(header: list[str], rows: list[list[str]], info) -> dict:
    """The task's validation metrics on the out-of-fold predictions (multiclass val/loss: the
    cross-entropy of the probabilities); for multi-label also ``thresholds``, tuned on them, which
    ``imgcls predict CV_DIR`` then uses."""
    import torch.nn.functional as F
    task, classes = info.task_type, [str(c) for c in info.classes]
    probs = task.decoded_from_csv(header, rows, classes)
    labels = task.labels_from_text([r[header.index("label")] for r in rows])
    target = task.target_tensor(task.encode(labels, classes), classes)
    metrics = task.oof_metrics(classes)
    loss = F.nll_loss(task.raw_outputs(probs), target, reduction="sum") if task.name == "multiclass" else None
    metrics.update(probs, target, loss)
    out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.compute().items()}
    if task.name == "multilabel":
        out["thresholds"] = [row["threshold"] for row in metrics.details()["per_label"]]
    return out


def format_summary(summary: dict) -> str:
    """The printed table: each metric's mean ± std over folds, and its out-of-fold value."""
    oof = summary.get("oof") or {}
    lines = [f"{'metric':<22} {'mean ± std over ' + str(len(summary['folds'])) + ' folds':>28}  {'out-of-fold':>11}"]
    for k, m in summary["mean"].items():
        o = oof.get(k) if _is_number(oof.get(k)) else None
        lines.append(f"{k:<22} {m:>19.4f} ± {summary['std'][k]:.4f}  {'' if o is None else f'{o:.4f}':>11}")
    return "\n".join(lines)
