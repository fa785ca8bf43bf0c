"""What every report kind's page is made of: the figure saver, the page of a run folder, findings, the
facts of a run (its config, task, model, time and versions), its summary and its training curves.

A report kind (classreport, taskreport, headreport, cvreport) builds its own sections from these, from
``scores`` and ``headsections``, and never from another kind.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import plots
from .findings import Finding, lr_ending_high, overfitting, still_improving
from .html import duration, esc, img, num, page, png_uri, section, table
from .rundata import RunData
from ..errors import UserError
from ..io import atomic_write_bytes


class Plots:
    """Writes each figure to RUN_DIR/plots/<name>.png and hands back its data URI."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(exist_ok=True)

    def __call__(self, name: str, fig) -> str:
        data = plots.png_bytes(fig)
        atomic_write_bytes(self.folder / f"{name}.png", data)  # a full disk leaves the old picture whole
        return png_uri(data)


def write_run_page(run: RunData, body: Sequence[str], nav: Sequence[tuple[str, str]], *,
                   task_shown: bool = True) -> Path:
    """RUN_DIR/report.html: the page shell around the sections ``body``, the best epoch in its subtitle."""
    from ..io import atomic_write_text

    finished = _dt.datetime.fromtimestamp((run.run_dir / "metrics.csv").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    facts = [str(run.run_dir.resolve()), *([run.task] if task_shown else []), f"finished {finished}",
             f"best {run.monitor} {num(run.best(run.monitor), 4)} at epoch {run.val_metrics.get('epoch', '?')}"]
    html = page(f"Run report: {run.name}", esc("  ·  ".join(facts)), list(nav), "".join(body),
                footer=esc(f"written by imgcls {run.env.get('imgcls', '')} from the files in this run folder"))
    out = run.run_dir / "report.html"
    atomic_write_text(out, html)
    return out


def no_predictions(id_: str, title: str) -> str:
    return section(id_, title, '<p class="note">val_predictions.csv is missing.</p>')


# ------------------------------------------------------------------ findings

def findings_section(found: list[Finding]) -> str:
    items = "".join(f'<li class="{f.severity}" data-kind="{f.kind}">{esc(f.text)}</li>' for f in found)
    return section("findings", "Findings", f'<ul class="findings">{items}</ul>')


def direction(run: RunData, metric: str) -> str:
    """'max' or 'min': the direction the run's task declares for ``metric``."""
    try:
        return run.model.task_type.direction(metric)
    except UserError:  # a metric the task does not declare (an older run): losses are the only 'min' guess
        return "min" if metric.endswith("loss") else "max"


def training_findings(run: RunData) -> list[Optional[Finding]]:
    """What the curves say: overfitting, a learning rate ending high, a monitor still improving."""
    found = [overfitting(run.column("train/loss"), run.column("val/loss")), lr_ending_high(run.column("lr"))]
    monitor = run.monitor
    if run.history and monitor in run.history[0]:
        found.append(still_improving(run.column(monitor), direction(run, monitor) == "max", monitor))
    return found


def sorted_findings(found: list[Optional[Finding]], ok_text: str) -> list[Finding]:
    """Warnings first; ``ok_text`` as the first finding when there is no warning."""
    found = [f for f in found if f is not None]
    found.sort(key=lambda f: f.severity != "warn")
    if not any(f.severity == "warn" for f in found):
        found.insert(0, Finding("ok", ok_text, "info"))
    return found


# ------------------------------------------------------------------ facts and summary

def param_count(path: Path) -> Optional[int]:
    """Learnable parameters in best.safetensors (batch-norm running statistics left out), header only."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


def config_facts(cfg: dict) -> list[tuple[str, str]]:
    """Loss, optimizer, schedule, batch, data and monitor of a config.yaml, one line each."""
    g = lambda sec, key, default="–": cfg.get(sec, {}).get(key, default)  # noqa: E731
    loss = str(g("loss", "name"))
    if loss == "focal":
        loss += f" (gamma {g('loss', 'gamma')})"
    elif loss == "label_smoothing":
        loss += f" (epsilon {g('loss', 'smoothing')})"
    if g("loss", "class_weights", None):
        loss += f", class weights {g('loss', 'class_weights')}"
    sched = str(g("sched", "name"))
    if g("sched", "warmup_epochs", 0):
        sched += f", {g('sched', 'warmup_epochs')} warm-up epoch(s)"
    return [
        ("loss", loss),
        ("optimizer", f"{g('optim', 'name')}, lr {g('optim', 'lr')}, weight decay {g('optim', 'weight_decay')}"),
        ("schedule", sched),
        ("batch", f"{g('train', 'batch_size')} x {g('train', 'accumulate', 1)} accumulated, "
                  f"precision {g('train', 'precision')}"),
        ("data", f"augment {g('data', 'augment')}, sampler {g('data', 'sampler')}, "
                 f"mixup {g('data', 'mixup', 0)}, cutmix {g('data', 'cutmix', 0)}"),
        ("monitor", f"{g('train', 'monitor')}, seed {g('train', 'seed')}"),
    ]


def task_facts(run: RunData) -> str:
    """The task of a run other than multiclass in one line: its labels, target or heads."""
    r = run.record
    if run.task == "multilabel":
        return (f"multilabel, {len(run.model.classes)} labels joined by '{r.get('separator', '|')}', "
                "one tuned threshold per label")
    if run.task == "regression":
        text = f"regression, training target mean {num(r.get('mean'), 4)}, std {num(r.get('std'), 4)}"
        return text + (f", bins at {', '.join(f'{b:g}' for b in r['bins'])}" if r.get("bins") else "")
    if run.task == "multihead":
        task = run.model.task_type
        heads = "; ".join(f"{h.name} ({f'{h.size} classes' if h.type == 'multiclass' else 'regression'}, {h.loss}"
                          + (f", weight {h.weight:g}" if h.weight != 1 else "") + ")" for h in task.heads)
        rule = f"; combined = {task.rule.expr} ({task.rule.size} classes)" if task.rule is not None else ""
        return f"multihead: {heads}{rule}"
    return run.task


def time_fact(run: RunData) -> tuple[str, str]:
    seconds = float(np.nansum(run.column("seconds"))) if run.history else math.nan
    env = run.env
    return ("time", f"{duration(seconds)} on {env.get('device', '?')}"
                    + (f" ({env['device_name']})" if env.get("device_name") else ""))


def versions_fact(env: dict, with_git: bool = True) -> tuple[str, str]:
    return ("versions", ", ".join(f"{name} {env[name]}" for name in ("imgcls", "torch", "timm") if env.get(name))
                        + (f", git {str(env['git_commit'])[:10]}" if with_git and env.get("git_commit") else ""))


def facts_block(facts: Sequence[tuple[str, str]]) -> str:
    return '<div class="facts">' + "".join(f"<div><b>{esc(a)}</b> {esc(b)}</div>" for a, b in facts) + "</div>"


def _train_total(run: RunData) -> Optional[int]:
    """Training images, where model.json's counts tell (multi-label counts an image once per label)."""
    counts = run.model.train_counts
    if not counts:
        return None
    if run.task == "regression":
        return sum(counts)
    if run.task == "multihead":  # counts per output, the heads side by side: the first head's add up to N
        return sum(counts[:run.model.task_type.heads[0].size])
    return None


def task_summary(run: RunData, n_val: Optional[int], names: Optional[Sequence[str]] = None) -> str:
    """A run of a task other than multiclass: facts and the best epoch's metrics (``names``, default: all
    the task declares)."""
    vm, info = run.val_metrics, run.model
    params = param_count(run.run_dir / "best.safetensors")
    n_train = _train_total(run)
    better = "higher" if direction(run, run.monitor) == "max" else "lower"
    facts = [
        ("run folder", str(run.run_dir.resolve())),
        ("task", task_facts(run)),
        ("model", f"{info.architecture}" + (f", {params / 1e6:.2f} M parameters" if params else "")
                  + f", input {info.image_size}x{info.image_size}x{info.channels}"),
        ("data", (f"{n_train} train / " if n_train is not None else "")
                 + f"{n_val if n_val is not None else vm.get('num_samples', '?')} validation images"),
        ("best epoch", f"{vm.get('epoch', '?')} of {len(run.history)} by {run.monitor} "
                       f"({num(run.best(run.monitor), 4)}, {better} is better)"),
        time_fact(run),
        *config_facts(run.config),
        versions_fact(run.env),
    ]
    names = [m for m in (names or info.task_type.metric_names()) if math.isfinite(run.best(m))]
    best = table(["metric", "at the best epoch"], [
        f'<tr data-metric="{esc(m)}"><td>{esc(m)}</td><td class="num" data-value="{run.best(m)!r}">'
        f'{num(run.best(m), 4)}</td></tr>' for m in names], id_="best-metrics")
    return section("summary", "Summary", f"{facts_block(facts)}{best}")


def curves_section(run: RunData, save: Plots, shown: Sequence[str]) -> str:
    """Loss, the metrics ``shown`` and the learning rate per epoch, the best epoch marked."""
    fig = plots.curves(run.column("epoch"), run.column("train/loss"), run.column("val/loss"),
                       {m: run.column(m) for m in shown}, run.column("lr"), run.val_metrics.get("epoch"))
    return section("curves", "Training curves", img(save("curves", fig), "loss, metrics and learning rate per epoch"),
                   "The dotted line marks the best epoch, whose weights are in best.safetensors.")


def task_curves(run: RunData, save: Plots, preferred: tuple[str, ...], most: int) -> str:
    """The curves of a run other than multiclass: its monitor and up to ``most`` of ``preferred`` that it logged."""
    available = set(run.history[0]) if run.history else set()
    shown = [m for m in (run.monitor, *preferred) if m in available and not m.endswith("loss")]
    return curves_section(run, save, list(dict.fromkeys(shown))[:most])
