"""The report of a cross-validation folder: CV_DIR/report.html (``write_report`` hands a cv folder here).

Sections, in reading order: findings, summary, the folds side by side (one row per fold: its best epoch
and metrics, then mean ± std over the folds and the out-of-fold row), each fold's curves, the
out-of-fold results (multiclass: per-class table and confusion matrix; multi-head: a section per head
and the combined class; other task types: their row in the folds table), and every metric per fold.

Each fold's numbers are its val_metrics.json (its best epoch); mean and std (population, ddof=0, as
cv_summary.json has them) are computed here over the folds that finished. Out-of-fold metrics are
cv_summary.json's, and the per-class rows and confusion matrices are recomputed from
oof_predictions.csv by the task's own metrics. Numbers carry ``data-*`` attributes with exact values.
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
import yaml

from . import plots
from .findings import Finding, overfitting, still_improving
from .headsections import HeadResults, head_sections
from .html import esc, img, num, page, section, table
from .rundata import RunData, load_run, read_history, read_json
from .scores import classification_section
from .sections import Plots, config_facts, direction, facts_block, findings_section, task_facts, versions_fact
from ..errors import UserError

KEY_METRICS = {  # the folds table's columns after the monitor; every metric is in "All metrics"
    "multiclass": ("val/acc", "val/f1_macro", "val/balanced_acc", "val/auroc", "val/loss"),
    "multilabel": ("val/map", "val/f1_macro", "val/f1_macro_at_0.5", "val/lrap", "val/loss"),
    "regression": ("val/mae", "val/rmse", "val/r2", "val/loss"),
}
OPTIMISM = ("Each fold's best epoch was chosen on that fold's own validation images, so the out-of-fold "
            "metrics (and the mean over folds) are slightly optimistic, like any best-epoch number.")


# ------------------------------------------------------------------ the cv folder

@dataclass
class Fold:
    k: int
    run_dir: Path
    val_metrics: Optional[dict]      # None: the fold has not finished
    history: list[dict]              # metrics.csv rows as floats

    def value(self, key: str) -> float:
        v = (self.val_metrics or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

    def column(self, key: str) -> np.ndarray:
        return np.array([row.get(key, math.nan) for row in self.history], dtype=float)


@dataclass
class CVData:
    cv_dir: Path
    folds: list[Fold]
    first: RunData                   # the first finished fold: task, model, versions
    config: dict                     # CV_DIR/config.yaml
    summary: dict                    # cv_summary.json ({} if absent)
    fold_sizes: list[int]            # validation images per fold, from folds.csv
    grouped: bool

    @property
    def finished(self) -> list[Fold]:
        return [f for f in self.folds if f.val_metrics is not None]

    @property
    def monitor(self) -> str:
        return self.first.monitor

    def metric_names(self) -> list[str]:
        """The task's metrics that some fold has, in the task's order."""
        have = {k for f in self.finished for k in f.val_metrics}
        return [m for m in self.first.model.task_type.metric_names() if m in have]

    def mean_std(self, key: str) -> tuple[float, float]:
        values = [f.value(key) for f in self.finished if math.isfinite(f.value(key))]
        return (float(np.mean(values)), float(np.std(values))) if values else (math.nan, math.nan)


def load_cv(cv_dir: str | Path) -> CVData:
    """A cv folder's files; a UserError when it has no finished fold."""
    from ..runfolder import read_state

    cv_dir = Path(cv_dir)
    state = read_state(cv_dir)
    folds = []
    for k in range(int(state["folds"])):
        d = cv_dir / f"fold-{k}"
        done = k in state.get("finished", []) and (d / "val_metrics.json").is_file()
        folds.append(Fold(k, d, read_json(d / "val_metrics.json") if done else None, read_history(d / "metrics.csv")))
    finished = [f for f in folds if f.val_metrics is not None]
    if not finished:
        raise UserError(f"'{cv_dir}' has no finished fold yet; continue it with 'imgcls cv --resume {cv_dir}' and "
                        "report on it then.")
    sizes, grouped = [0] * len(folds), False
    if (cv_dir / "folds.csv").is_file():
        with open(cv_dir / "folds.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("fold", "").isdigit() and int(row["fold"]) < len(sizes):
                    sizes[int(row["fold"])] += 1
                grouped = grouped or bool(row.get("group"))
    config = (yaml.safe_load((cv_dir / "config.yaml").read_text()) or {}) if (cv_dir / "config.yaml").is_file() else {}
    summary = read_json(cv_dir / "cv_summary.json") if (cv_dir / "cv_summary.json").is_file() else {}
    return CVData(cv_dir, folds, load_run(finished[0].run_dir, need_model=True), config, summary, sizes, grouped)


def oof_results(cv: CVData) -> Optional[tuple[list[dict], dict, dict]]:
    """(rows, metrics, details) of oof_predictions.csv by the task's own out-of-fold metrics; None without it."""
    import torch

    path = cv.cv_dir / "oof_predictions.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader, []), list(reader)
    info = cv.first.model
    task, classes = info.task_type, [str(c) for c in info.classes]
    try:
        probs = task.decoded_from_csv(header, rows, classes)
        labels = task.labels_from_text([r[header.index("label")] for r in rows])
        target = task.target_tensor(task.encode(labels, classes), classes)
    except (KeyError, ValueError, IndexError) as e:
        raise UserError(f"'{path}' does not match the folds' model.json ({e}); run the cv again.") from None
    metrics = task.oof_metrics(classes)
    with torch.no_grad():
        metrics.update(probs, target, None)
    return [dict(zip(header, r)) for r in rows], metrics.compute(), metrics.details()


# ------------------------------------------------------------------ findings

def cv_findings(cv: CVData, oof: dict) -> list[Finding]:
    """Unfinished folds, the spread of the monitored metric over folds, what the folds' own curves say,
    and why the out-of-fold numbers are optimistic."""
    found: list[Optional[Finding]] = []
    missing = [f.k for f in cv.folds if f.val_metrics is None]
    if missing:
        found.append(Finding("unfinished", (
            f"Fold(s) {', '.join(map(str, missing))} of {len(cv.folds)} have not finished, so the mean over folds "
            f"rests on {len(cv.finished)} fold(s) and there are no out-of-fold predictions yet; continue with "
            f"'imgcls cv --resume {cv.cv_dir}'.")))
    m = cv.monitor
    values = {f.k: f.value(m) for f in cv.finished if math.isfinite(f.value(m))}
    if len(values) >= 2:
        higher = direction(cv.first, m) == "max"
        worst = (min if higher else max)(values, key=values.get)
        best = (max if higher else min)(values, key=values.get)
        mean, std = cv.mean_std(m)
        spread = (f"from {values[worst]:.4f} (fold {worst}) to {values[best]:.4f} (fold {best})"
                  if values[worst] != values[best] else "the same in every fold")
        text = (f"{m} over the {len(values)} folds: {mean:.4f} ± {std:.4f} (mean ± std), {spread}. The std is how "
                "much one fold's number moves with the split; differences between configs smaller than it are not "
                "evidence.")
        if isinstance(oof.get(m), (int, float)):
            text += f" Out of fold: {oof[m]:.4f}."
        found.append(Finding("spread", text, "info"))
    over = [f.k for f in cv.finished if overfitting(f.column("train/loss"), f.column("val/loss"))]
    if over:
        found.append(Finding("overfitting", (
            "Validation loss climbed at the end while training loss kept falling in fold(s) "
            f"{', '.join(map(str, over))} (overfitting, see each fold's report); stop earlier (train.patience), or "
            "add augmentation or weight decay.")))
    if m in (cv.first.history[0] if cv.first.history else {}):
        rising = [f.k for f in cv.finished if still_improving(f.column(m), direction(cv.first, m) == "max", m)]
        if rising:
            found.append(Finding("still_improving", (
                f"{m} was still improving at the last epoch in {len(rising)} of {len(cv.finished)} fold(s) "
                f"({', '.join(map(str, rising))}); more epochs (train.epochs) may help."), "info"))
    found.append(Finding("optimistic", OPTIMISM + " For an unbiased number, evaluate on images no fold has seen.",
                         "info"))
    found = [f for f in found if f is not None]
    found.sort(key=lambda f: f.severity != "warn")
    return found


# ------------------------------------------------------------------ sections

def _summary(cv: CVData) -> str:
    first, env = cv.first, cv.first.env
    info = first.model
    n = sum(cv.fold_sizes)
    facts = [
        ("cv folder", str(cv.cv_dir.resolve())),
        ("task", task_facts(first)),
        ("model", f"{info.architecture}, input {info.image_size}x{info.image_size}x{info.channels}"),
        ("folds", f"{len(cv.folds)} folds of {n} images ({', '.join(map(str, cv.fold_sizes))}), stratified by label, "
                  + ("grouped (no group in two folds)" if cv.grouped else "not grouped")
                  + f"; {len(cv.finished)} finished"),
        ("best epoch", f"per fold by {cv.monitor} ({'higher' if direction(first, cv.monitor) == 'max' else 'lower'} "
                       "is better), on the fold's own validation images"),
        *config_facts(cv.config),
        versions_fact(env, with_git=False),
    ]
    return section("summary", "Summary", facts_block(facts))


def _key_metrics(cv: CVData) -> list[str]:
    task = cv.first.model.task_type
    if cv.first.task == "multihead":
        keys = ["val/combined/f1_macro", "val/combined/acc",
                *[f"val/{h.name}/{'f1_macro' if h.type == 'multiclass' else 'mae'}" for h in task.heads], "val/loss"]
    else:
        keys = list(KEY_METRICS.get(cv.first.task, task.metric_names()[:6]))
    have = cv.metric_names()
    return [k for k in dict.fromkeys([cv.monitor, *keys]) if k in have]


def _cell(key: str, value: float) -> str:
    return f'<td class="num" data-metric="{esc(key)}" data-value="{value!r}">{num(value, 4)}</td>'


def _fold_row(cv: CVData, f: Fold, keys: list[str]) -> str:
    link = f.run_dir / "report.html"
    report = (f'<a href="{esc(f"{f.run_dir.name}/report.html")}">report</a>' if link.is_file()
              else f"<span class=\"note\">imgcls report {esc(str(f.run_dir))}</span>")
    size = cv.fold_sizes[f.k]
    head = f'<tr data-fold="{f.k}"><th>{esc(f.run_dir.name)}</th><td class="num">{size}</td>'
    if f.val_metrics is None:
        weak = head.replace(">", ' class="weak">', 1)
        return f'{weak}<td colspan="{len(keys) + 1}" class="note">not finished</td><td></td></tr>'

    epoch = f.val_metrics.get("epoch", "?")
    return (f'{head}<td class="num" data-metric="epoch" data-value="{epoch}">{epoch} of {len(f.history)}</td>'
            + "".join(_cell(k, f.value(k)) for k in keys) + f"<td>{report}</td></tr>")


def _folds(cv: CVData, oof: dict) -> str:
    keys = _key_metrics(cv)
    rows = [_fold_row(cv, f, keys) for f in cv.folds]
    stats = [(k, *cv.mean_std(k)) for k in keys]
    rows.append(f'<tr data-fold="mean" class="mean"><th>mean ± std</th><td class="num">{sum(cv.fold_sizes)}</td>'
                f'<td></td>' + "".join(f'<td class="num" data-metric="{esc(k)}" data-mean="{m!r}" data-std="{s!r}">'
                                      f"{num(m, 4)} ± {num(s, 4)}</td>" for k, m, s in stats) + "<td></td></tr>")
    if oof:
        rows.append(f'<tr data-fold="oof"><th>out of fold</th><td class="num">{sum(cv.fold_sizes)}</td><td></td>'
                    + "".join(_cell(k, _number(oof.get(k))) for k in keys) + "<td></td></tr>")
    body = table(["fold", "validation images", "best epoch", *keys, "fold report"], rows, id_="folds-table")
    intro = (f"One row per fold, at its best epoch by {esc(cv.monitor)} (the first column of metrics). "
             f"Mean ± std (population std, ddof=0) over the {len(cv.finished)} finished fold(s); the out-of-fold row "
             f"scores every image once, by the model that did not train on it. {OPTIMISM}")
    return section("folds", "Folds side by side", f'<div class="cm-wrap">{body}</div>', intro)


def _number(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _all_metrics(cv: CVData, oof: dict) -> str:
    rows = []
    for k in cv.metric_names():
        m, s = cv.mean_std(k)
        cells = "".join(f'<td class="num" data-fold="{f.k}" data-value="{f.value(k)!r}">{num(f.value(k), 4)}</td>'
                        for f in cv.folds)
        rows.append(f'<tr data-metric="{esc(k)}"><th>{esc(k)}</th>{cells}'
                    f'<td class="num" data-fold="mean" data-value="{m!r}">{num(m, 4)}</td>'
                    f'<td class="num" data-fold="std" data-value="{s!r}">{num(s, 4)}</td>'
                    f'<td class="num" data-fold="oof" data-value="{_number(oof.get(k))!r}">'
                    f"{num(_number(oof.get(k)), 4)}</td></tr>")
    head = ["metric", *[f.run_dir.name for f in cv.folds], "mean", "std", "out of fold"]
    return section("all-metrics", "Every metric per fold",
                   f'<div class="cm-wrap">{table(head, rows, id_="all-metrics-table")}</div>',
                   "Each fold's val_metrics.json (its best epoch), mean and std over the finished folds, and "
                   "cv_summary.json's out-of-fold metrics.")


def _curves(cv: CVData, save: Plots) -> str:
    m = cv.monitor
    folds = [(f.run_dir.name, {"epoch": f.column("epoch"), "val/loss": f.column("val/loss"), m: f.column(m)},
              f.val_metrics.get("epoch")) for f in cv.finished]
    return section("curves", "Curves of every fold", img(save("fold_curves", plots.fold_curves(folds, m)),
                                                          "validation loss and monitored metric per fold"),
                   "Each fold's own best epoch (circled) is the one whose weights it keeps.")


def _oof(cv: CVData, result: Optional[tuple], oof: dict, save: Plots) -> tuple[list[str], list[tuple[str, str]]]:
    """The out-of-fold results: per class and confusion matrix (multiclass), per head (multi-head)."""
    title = "Out-of-fold predictions"
    if result is None:
        note = ("oof_predictions.csv is written when every fold has finished; continue with "
                f"'imgcls cv --resume {cv.cv_dir}'." if len(cv.finished) < len(cv.folds)
                else "oof_predictions.csv is missing; run 'imgcls cv --resume' on the folder to write it again.")
        return [section("oof", title, f'<p class="note">{esc(note)}</p>')], [("oof", "Out of fold")]
    rows, metrics, details = result
    task = cv.first.model.task_type
    intro = (f"Every image once, predicted by the fold that did not train on it ({len(rows)} images in "
             f"oof_predictions.csv). {OPTIMISM}")
    if cv.first.task == "multiclass":
        body = classification_section("oof", title, details, _number(oof.get("val/acc")), None, save,
                                      intro=intro + " ")
        return [body], [("oof", "Out of fold")]
    if cv.first.task == "multihead":
        res = HeadResults(task, {**metrics, **oof}, details, rows, prefix="oof-",
                          source=str(cv.cv_dir / "oof_predictions.csv"), label="out of fold")
        heads, nav = head_sections(res, save)
        return [section("oof", title, "", intro), *heads], [("oof", "Out of fold"), *nav]
    listed = [f'<tr data-metric="{esc(k)}"><td>{esc(k)}</td>{_cell(k, _number(v))}</tr>'
              for k, v in oof.items() if math.isfinite(_number(v))]
    scalars = table(["metric", "out of fold"], listed, id_="oof-table")
    return [section("oof", title, scalars, intro)], [("oof", "Out of fold")]


# ------------------------------------------------------------------ the report

def write_cv_report(cv_dir: str | Path) -> Path:
    """Write CV_DIR/report.html (self-contained but for links to the folds' own reports) and
    CV_DIR/plots/*.png from the cv folder's files. Returns the path of report.html; a UserError when the
    folder has no finished fold."""
    from ..io import atomic_write_text, check_writable

    cv = load_cv(cv_dir)
    check_writable(cv.cv_dir, "cv folder", "copy the cv folder somewhere writable and report on the copy")
    with matplotlib.rc_context(plots.font_rc()):  # class names in any script, where a font has the glyphs
        result = oof_results(cv)
        oof = dict(cv.summary.get("oof") or (result[1] if result else {}))
        if cv.first.task != "multiclass":  # cv scores the out-of-fold loss for multiclass only (0 or NaN otherwise)
            oof.pop("val/loss", None)
        save = Plots(cv.cv_dir / "plots")
        oof_body, oof_nav = _oof(cv, result, oof, save)
        body = [findings_section(cv_findings(cv, oof)), _summary(cv), _folds(cv, oof), _curves(cv, save), *oof_body,
                _all_metrics(cv, oof)]
    nav = [("findings", "Findings"), ("summary", "Summary"), ("folds", "Folds"), ("curves", "Curves"), *oof_nav,
           ("all-metrics", "All metrics")]
    mean, std = cv.mean_std(cv.monitor)
    stamp = max((p.stat().st_mtime for f in cv.finished if (p := f.run_dir / "metrics.csv").is_file()),
                default=(cv.cv_dir / "cv.json").stat().st_mtime)
    subtitle = esc(f"{cv.cv_dir.resolve()}  ·  {cv.first.task}  ·  {len(cv.finished)} of {len(cv.folds)} folds  ·  "
                   f"finished {_dt.datetime.fromtimestamp(stamp).strftime('%Y-%m-%d %H:%M')}  ·  {cv.monitor} "
                   f"{num(mean, 4)} ± {num(std, 4)}")
    html = page(f"Cross-validation report: {cv.cv_dir.name}", subtitle, nav, "".join(body),
                footer=esc(f"written by imgcls {cv.first.env.get('imgcls', '')} from the files in this cv folder"))
    out = cv.cv_dir / "report.html"
    atomic_write_text(out, html)
    return out
