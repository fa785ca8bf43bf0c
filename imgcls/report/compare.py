"""Several runs side by side: which config keys differ, their best metrics, their curves overlaid."""
from __future__ import annotations

import matplotlib

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..tasks import get_task
from . import plots
from .html import duration, esc, img, page, png_uri, section, table
from .rundata import RunData, load_run

METRICS = ("val/acc", "val/f1_macro", "val/balanced_acc", "val/auroc", "val/loss", "train/loss", "top5_acc", "ece")
LOWER_IS_BETTER = {"val/loss", "train/loss", "ece"}
_CV_KEYS = ("data.fold", "data.folds_csv")  # what differs between the folds of one cv, not between runs


@dataclass
class Compared:
    """One column of a comparison: a run folder, or a cv folder (its finished folds' mean ± std)."""
    name: str
    run_dir: Path
    config: dict
    task: str
    task_type: object                 # the run's configured Task (its metric names and directions)
    monitor: str
    runs: list[RunData]               # the run itself, or each finished fold

    @property
    def is_cv(self) -> bool:
        return len(self.runs) > 1 or (self.run_dir / "cv.json").is_file()

    def value(self, key: str):
        """The best epoch's ``key``: a number, or (mean, std) over a cv's folds; NaN where absent."""
        values = [r.best(key) for r in self.runs]
        if not self.is_cv:
            return values[0]
        finite = [v for v in values if math.isfinite(v)]
        return (float(np.mean(finite)), float(np.std(finite))) if finite else math.nan

    def column(self, key: str) -> np.ndarray:
        """A metrics.csv column over epochs; a cv's mean over its folds (epoch by epoch)."""
        cols = [r.column(key) for r in self.runs]
        n = max(len(c) for c in cols)
        grid = np.full((len(cols), n), np.nan)
        for i, c in enumerate(cols):
            grid[i, :len(c)] = c
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no fold reached is NaN, as it should be
            return np.nanmean(grid, axis=0) if len(cols) > 1 else grid[0]


@dataclass
class Comparison:
    names: list[str]
    runs: list[Compared]
    config_diff: list[tuple[str, list]]   # dotted key -> value per run, only keys whose values differ
    best: list[tuple[str, list]]          # row name -> value per run (best epoch, time, metrics)
    directions: dict = field(default_factory=dict)  # metric row -> 'max' or 'min'


def flatten(d: dict, prefix: str = "") -> dict:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _names(runs: Sequence[Compared]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name in different places: show the parent too
        names = [f"{r.run_dir.parent.name}/{r.name}" for r in runs]
    return [f"{n} (cv, {len(r.runs)} folds)" if r.is_cv else n for n, r in zip(names, runs)]


def load_compared(path: str | Path) -> Compared:
    """A run folder or a cv folder (its finished folds) as one column of a comparison."""
    from ..runfolder import is_cv_dir
    path = Path(path)
    if is_cv_dir(path):
        from .cvreport import load_cv
        cv = load_cv(path)
        runs = [load_run(f.run_dir, need_model=True) for f in cv.finished]
        config = cv.config or runs[0].config
        config = {k: v for k, v in flatten(config).items() if k not in _CV_KEYS}
        return Compared(path.name, path, config, runs[0].task, runs[0].model.task_type, runs[0].monitor, runs)
    run = load_run(path)
    task = run.model.task_type if run.model is not None else get_task("multiclass")
    return Compared(path.name, path, flatten(run.config), run.task, task, run.monitor, [run])


def _metric_rows(runs: Sequence[Compared]) -> list[str]:
    """Multiclass runs: the classic rows. Otherwise every metric of the task that some run has, in the
    task's order (a multi-head run's heads and combined class included), train/loss last."""
    if all(r.task == "multiclass" for r in runs):
        return list(METRICS)
    names = []
    for r in runs:
        names += [m for m in r.task_type.metric_names() if m not in names]
    have = {k for r in runs for run in r.runs for k in run.val_metrics}
    return [m for m in names if m in have and m != "train/loss"] + ["train/loss"]


def _direction(runs: Sequence[Compared], metric: str) -> str:
    if metric in LOWER_IS_BETTER:
        return "min"
    for r in runs:
        if metric in r.task_type.metric_names():
            return r.task_type.direction(metric)
    return "max"


def _check_comparable(runs: Sequence[Compared]) -> None:
    """Runs of different task types have no metric in common that means the same: one sentence, not a table."""
    kinds = {r.task for r in runs}
    if len(kinds) > 1:
        shown = ", ".join(f"'{r.run_dir}' is {r.task}" for r in runs)
        raise UserError(f"compare puts runs of one task type side by side, and these differ ({shown}): their "
                        "metrics do not measure the same thing; compare each task type's runs separately.")


def compare_runs(run_dirs: Sequence[str | Path]) -> Comparison:
    """Load each run (or cv) folder; config keys that differ (run.* left out: folder names always differ);
    the best epoch's metrics of the task (a cv folder's fold mean ± std)."""
    if not run_dirs:
        raise UserError("compare needs at least one run folder; pass e.g. 'imgcls compare runs/exp-1 runs/exp-2'.")
    runs = [load_compared(d) for d in run_dirs]
    _check_comparable(runs)
    flat = [r.config for r in runs]
    fold_keys = _CV_KEYS if any(r.is_cv for r in runs) else ()  # a cv's own folds set them, a run does not
    keys = sorted({k for f in flat for k in f if not k.startswith("run.") and k not in fold_keys})
    diff = [(k, [f.get(k, "–") for f in flat]) for k in keys if len({repr(f.get(k, "–")) for f in flat}) > 1]
    metrics = _metric_rows(runs)
    best = [
        ("best epoch", [_epoch(r) for r in runs]),
        ("epochs run", [_epochs_run(r) for r in runs]),
        ("time", [duration(float(sum(np.nansum(run.column("seconds")) for run in r.runs))) for r in runs]),
        ("monitor", [r.monitor for r in runs]),
        ("weights", [_weights(r) for r in runs]),
        *[(m, [r.value(m) for r in runs]) for m in metrics],
    ]
    return Comparison(_names(runs), runs, diff, best, {m: _direction(runs, m) for m in metrics})


def weights_text(w: dict) -> str:
    """A run's starting weights in a few words: 'scratch', or the source with its commit and sha256."""
    if not w:
        return "scratch"
    where = w.get("repo") or w.get("file") or w.get("name") or "?"
    if w.get("kind") == "file":
        where = Path(where).name
    rev = f" @ {w['revision'][:12]}" if w.get("revision") else ""
    return f"{where}{rev} (sha256 {str(w.get('sha256', ''))[:12]})"


def _weights(r: Compared) -> str:
    """One text for a run; a cv's folds share their weights (one pinned revision), else each is listed."""
    texts = [weights_text(run.model.weights if run.model is not None else {}) for run in r.runs]
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


def _epoch(r: Compared):
    epochs = [run.val_metrics.get("epoch", "–") for run in r.runs]
    return epochs[0] if not r.is_cv else " / ".join(str(e) for e in epochs)


def _epochs_run(r: Compared):
    counts = [len(run.history) for run in r.runs]
    return counts[0] if not r.is_cv else " / ".join(str(n) for n in counts)


def _cfg(v) -> str:
    return "null" if v is None else str(v)


def _fmt(v) -> str:
    if isinstance(v, tuple):  # a cv folder's mean ± std over folds
        return "–" if not math.isfinite(v[0]) else f"{v[0]:.4f} ± {v[1]:.4f}"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4f}"
    return "null" if v is None else str(v)


def format_comparison(c: Comparison) -> str:
    """A plain-text table: config differences, then the best metrics, one column per run."""
    blank = [""] * len(c.names)
    rows = [("", c.names), ("config", blank)]
    rows += [(f"  {k}", [_cfg(v) for v in vals]) for k, vals in c.config_diff] or [("  (no differences)", blank)]
    rows += [("best", blank)]
    rows += [(f"  {k}", [_fmt(v) for v in vals]) for k, vals in c.best]
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(str(r[1][j])) for r in rows) for j in range(len(c.names))]
    lines = [f"{label:<{w0}}  " + "  ".join(f"{str(v):>{widths[j]}}" for j, v in enumerate(vals))
             for label, vals in rows]
    return "\n".join(line.rstrip() for line in lines)


def _best_runs(metric: str, values: list, direction: str = "") -> set[int]:
    """Indices of the runs with the best value of ``metric`` (all of them on a tie; a cv by its mean)."""
    values = [v[0] if isinstance(v, tuple) else v for v in values]
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(finite) < 2:
        return set()
    lower = direction == "min" if direction else metric in LOWER_IS_BETTER
    best = min(finite) if lower else max(finite)
    return {i for i, v in enumerate(values) if v == best}


def _third_curve(c: Comparison, monitor: str) -> str:
    """The third panel: val/acc for multiclass runs, else the first of the task's metrics besides the
    monitor and the losses (val/rmse, val/f1_micro, a head's metric...)."""
    if all(r.task == "multiclass" for r in c.runs):
        return "val/acc"
    rest = [m for m in c.directions if m not in (monitor, "val/loss", "train/loss")]
    return rest[0] if rest else "val/loss"


def write_compare(runs: Comparison | Sequence[str | Path], out: str | Path = "compare.html") -> Path:
    """compare.html (``out`` may be a folder): the config differences, best metrics (the best run in
    bold) and overlaid curves, from run folders or an existing ``compare_runs`` result."""
    from ..io import atomic_write_text

    c = runs if isinstance(runs, Comparison) else compare_runs(runs)
    head = ["", *c.names]
    diff_rows = [f"<tr><th>{esc(k)}</th>" + "".join(f"<td>{esc(_cfg(v))}</td>" for v in vals) + "</tr>"
                 for k, vals in c.config_diff] or ['<tr><td class="note">no differences</td></tr>']
    best_rows = []
    for k, vals in c.best:
        win = _best_runs(k, vals, c.directions.get(k, "")) if k in c.directions else set()
        cells = "".join(f'<td class="num">{f"<b>{esc(_fmt(v))}</b>" if i in win else esc(_fmt(v))}</td>'
                        for i, v in enumerate(vals))
        best_rows.append(f'<tr data-metric="{esc(k)}"><th>{esc(k)}</th>{cells}</tr>')
    monitor = c.runs[0].monitor
    third = _third_curve(c, monitor)
    cols = [(name, {k: r.column(k) for k in ("epoch", "train/loss", "val/loss", third, "lr", monitor)})
            for name, r in zip(c.names, c.runs)]
    with matplotlib.rc_context(plots.font_rc()):  # run names in any script
        curves = png_uri(plots.png_bytes(plots.compare_curves(cols, monitor, third)))
    body = (section("config", "Config differences", table(head, diff_rows, id_="config-diff"),
                    "Only keys whose values differ between the runs (run.* left out).")
            + section("best", "Best epoch of each run", table(head, best_rows, id_="best-metrics"),
                      "The best value of each metric in bold; a cv folder shows its folds' mean ± std (and "
                      "each fold's best epoch), its curves the mean over folds.")
            + section("curves", "Curves", img(curves, "curves of every run overlaid")))
    subtitle = esc("  ·  ".join(str(r.run_dir) for r in c.runs))
    html = page(f"Compare {len(c.runs)} runs", subtitle,
                [("config", "Config"), ("best", "Best metrics"), ("curves", "Curves")], body)
    folder = Path(out).is_dir() or str(out).endswith(("/", "\\"))
    out = Path(out) / "compare.html" if folder else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, html)
    return out
