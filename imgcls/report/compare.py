"""Several runs side by side: which config keys differ, their best metrics, their curves overlaid."""
from __future__ import annotations

import matplotlib

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from . import plots
from .html import duration, esc, img, page, png_uri, section, table
from .rundata import RunData, load_run

METRICS = ("val/acc", "val/f1_macro", "val/balanced_acc", "val/auroc", "val/loss", "train/loss", "top5_acc", "ece")
LOWER_IS_BETTER = {"val/loss", "train/loss", "ece"}


@dataclass
class Comparison:
    names: list[str]
    runs: list[RunData]
    config_diff: list[tuple[str, list]]   # dotted key -> value per run, only keys whose values differ
    best: list[tuple[str, list]]          # row name -> value per run (best epoch, time, metrics)


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


def _names(runs: Sequence[RunData]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name in different places: show the parent too
        names = [f"{r.run_dir.parent.name}/{r.name}" for r in runs]
    return names


def compare_runs(run_dirs: Sequence[str | Path]) -> Comparison:
    """Load each run folder; config keys that differ (run.* left out: folder names always differ)."""
    if not run_dirs:
        raise UserError("compare needs at least one run folder; pass e.g. 'imgcls compare runs/exp-1 runs/exp-2'.")
    runs = [load_run(d) for d in run_dirs]
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f if not k.startswith("run.")})
    diff = [(k, [f.get(k, "–") for f in flat]) for k in keys if len({repr(f.get(k, "–")) for f in flat}) > 1]
    best = [
        ("best epoch", [r.val_metrics.get("epoch", "–") for r in runs]),
        ("epochs run", [len(r.history) for r in runs]),
        ("time", [duration(float(np.nansum(r.column("seconds")))) for r in runs]),
        ("monitor", [r.monitor for r in runs]),
        *[(m, [r.val_metrics.get(m, math.nan) for r in runs]) for m in METRICS],
    ]
    return Comparison(_names(runs), runs, diff, best)


def _cfg(v) -> str:
    return "null" if v is None else str(v)


def _fmt(v) -> str:
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


def _best_runs(metric: str, values: list) -> set[int]:
    """Indices of the runs with the best value of ``metric`` (all of them on a tie)."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(finite) < 2:
        return set()
    best = min(finite) if metric in LOWER_IS_BETTER else max(finite)
    return {i for i, v in enumerate(values) if v == best}


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
        win = _best_runs(k, vals) if k in METRICS else set()
        cells = "".join(f'<td class="num">{f"<b>{esc(_fmt(v))}</b>" if i in win else esc(_fmt(v))}</td>'
                        for i, v in enumerate(vals))
        best_rows.append(f'<tr data-metric="{esc(k)}"><th>{esc(k)}</th>{cells}</tr>')
    monitor = c.runs[0].monitor
    cols = [(name, {k: r.column(k) for k in ("epoch", "train/loss", "val/loss", "val/acc", "lr", monitor)})
            for name, r in zip(c.names, c.runs)]
    with matplotlib.rc_context(plots.font_rc()):  # run names in any script
        curves = png_uri(plots.png_bytes(plots.compare_curves(cols, monitor)))
    body = (section("config", "Config differences", table(head, diff_rows, id_="config-diff"),
                    "Only keys whose values differ between the runs (run.* left out).")
            + section("best", "Best epoch of each run", table(head, best_rows, id_="best-metrics"),
                      "The best value of each metric in bold.")
            + section("curves", "Curves", img(curves, "curves of every run overlaid")))
    subtitle = esc("  ·  ".join(str(r.run_dir) for r in c.runs))
    html = page(f"Compare {len(c.runs)} runs", subtitle,
                [("config", "Config"), ("best", "Best metrics"), ("curves", "Curves")], body)
    folder = Path(out).is_dir() or str(out).endswith(("/", "\\"))
    out = Path(out) / "compare.html" if folder else Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, html)
    return out
