"""The epoch loop: train_epoch -> validate -> schedule -> log -> save best -> save last.

Checkpointing, early stopping and logging are ordinary calls below; ``on_epoch(epoch, row)`` is the
one callback (tracking, tuning, cross-validation plug in there, not into the loop).

Under torchrun every process runs this loop in step: each decision (stop on a signal, early stop,
the callback's) is agreed across processes, and only rank 0 writes (run.dist.is_main).
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from ..errors import UserError
from ..optim import get_lr
from .build import Run, rewrap_ddp
from .checkpoint import save_last
from .loop import train_epoch, validate
from .record import EpochWriter, Validation, improves
from .rundir import tensorboard_writer
from .signals import StopFlag, TrainingInterrupted

OnEpoch = Callable[[int, dict], bool]  # (1-based epoch, its metrics row) -> True to stop the run


@dataclass
class FitResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict
    stopped: Optional[str] = None   # 'early' | 'callback' | None


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def fit(run: Run, on_epoch: Optional[OnEpoch] = None) -> FitResult:
    """Train ``run`` from where its progress stands to ``run.fit_config.epochs``; returns the best epoch."""
    fit_config, log = run.fit_config, run.log
    log(f"run folder: {run.run_dir}")
    log(f"data: {len(run.split.train)} train / {len(run.split.val)} val images, "
        f"{run.task.classes_text(run.split.classes)}, "
        f"{run.info.channels} channel(s); split {run.split.grouping}; model {run.info.architecture} "
        f"({sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M parameters) on {run.device}")
    writer = (tensorboard_writer(run.run_dir, purge_step=run.progress.position.epoch + 1 if run.resumed else None)
              if run.dist.is_main else None)
    if not run.resumed:
        _save_last(run)  # resumable from the start
    stopped = None
    try:
        with StopFlag() as stop:
            while run.progress.position.epoch < fit_config.epochs:
                t0 = time.perf_counter()
                if run.freezer is not None:  # finetune.freeze_epochs: the head alone until the unfreeze epoch
                    change = run.freezer.start_epoch(run.progress.position.epoch)
                    if change is not None:
                        rewrap_ddp(run)  # DDP reduces the parameters that trained when it was built
                    if change:
                        log(change)
                _train(run, stop)
                row, improved = _validate_and_record(run, t0, writer)
                run.progress.position.next_epoch()
                _save_last(run)
                _log_epoch(run, row, improved)
                if _stopping(run, stop):
                    raise TrainingInterrupted(run.run_dir, stop.signum or signal.SIGTERM, run.dist.world)
                stopped = _should_stop(run, row, on_epoch)
                if stopped:
                    break
    finally:
        if writer is not None:
            writer.close()
    return _result(run, stopped)


def _save_last(run: Run) -> None:
    """last.pt, written by rank 0 (every process takes part in gathering what it holds)."""
    state = run.state_dict()
    if run.dist.is_main:
        save_last(run.run_dir / "last.pt", state)


def _stopping(run: Run, stop: StopFlag) -> bool:
    """A signal reached this process, or (under torchrun) any process: all stop at the same step."""
    return run.dist.any(stop.signum is not None, run.device)


def _train(run: Run, stop: StopFlag) -> None:
    """One epoch (or its remainder), with mid-epoch checkpoints and a clean stop on a signal."""
    position, fit_config = run.progress.position, run.fit_config
    run.sampler.set_epoch(position.epoch, start_batch=position.batches_done)
    bar = tqdm(run.train_loader, total=len(run.step_config.batch_sizes) - position.batches_done,
               desc=f"epoch {position.epoch + 1}", leave=False, disable=not fit_config.progress,
               dynamic_ncols=True)

    def on_step(state) -> bool:
        run.dist.mark_step(state.global_step)  # --nproc: names a rank that stops answering, and where
        if run.ema is not None:  # after every optimizer step, before a checkpoint can save it
            run.ema.update_parameters(run.model)
        if _stopping(run, stop):
            return True
        if fit_config.progress and state.global_step % 10 == 0:
            bar.set_postfix(loss=f"{state.mean_loss:.4f}")
        every = fit_config.checkpoint_every
        if every and state.global_step % every == 0 and state.batches_done < len(run.step_config.batch_sizes):
            _save_last(run)
            return _stopping(run, stop)  # a signal during that save: stop now, not a step later
        return False

    with _explain_oom(run.sampler.batch_size, run.step_config.accumulate, "training"):
        train_epoch(run.train_model, bar, run.criterion, run.optimizer, run.scheduler, run.step_config, run.prep,
                    position, run.scaler, on_step)
    bar.close()
    if position.batches_done < len(run.step_config.batch_sizes):  # on_step stopped the epoch: every process agreed
        _save_last(run)
        raise TrainingInterrupted(run.run_dir, stop.signum or signal.SIGTERM, run.dist.world)


def _validate_and_record(run: Run, t0: float, writer) -> tuple[dict, bool]:
    """Validate, step the epoch schedule, append the metrics row; save the best model when it improved."""
    position, fit_config, task = run.progress.position, run.fit_config, run.task
    if run.dist.active:  # rank 0's batch-norm statistics and EMA validate and are saved, on every process
        run.dist.broadcast_module(run.model)
        if run.ema is not None:
            run.dist.broadcast_module(run.ema)
    with _explain_oom(run.sampler.batch_size, run.step_config.accumulate, "validation"):
        model = (run.eval_model if run.ema is not None or run.dist.active  # DDP's wrapper is for training
                 else run.train_model)  # compiled when on, else the model
        v = Validation(*validate(model, run.val_loader, run.criterion, run.metrics, run.eval_prep,
                                 precision=run.step_config.precision, probabilities=task.decode_outputs, dist=run.dist))
    train_loss = _train_loss(run)
    value = v.scalars.get(fit_config.monitor, train_loss if fit_config.monitor == "train/loss" else None)
    run.scheduler.step_epoch(value)
    epoch = position.epoch + 1
    row = {"epoch": epoch, "lr": get_lr(run.optimizer), "train/loss": train_loss, **v.scalars,
           "seconds": round(time.perf_counter() - t0, 3), "skipped_steps": position.skipped_steps}
    record = EpochWriter(run.run_dir, task, run.split, fit_config.monitor)
    if run.dist.is_main:
        record.append(row, writer)
    p = run.progress
    improved = improves(value, p.best_value, fit_config.direction, run.eval_model)
    if improved:
        p.best_value, p.best_epoch, p.bad_epochs = value, epoch, 0
        if run.dist.is_main:
            run.info = record.save_best(run.info, run.eval_model, epoch, value, v, train_loss)
    else:
        p.bad_epochs += 1
    row["warnings"] = task.epoch_warnings(v.scalars, v.details)
    return row, improved


def _train_loss(run: Run) -> float:
    """train/loss over every process's samples of the epoch."""
    p = run.progress.position
    if not run.dist.active:
        return p.mean_loss
    total = run.dist.all_sum(torch.stack([p.loss_sum.double(), torch.tensor(float(p.samples), dtype=torch.float64,
                                                                            device=p.loss_sum.device)]))
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


def _log_epoch(run: Run, row: dict, improved: bool) -> None:
    shown = "  ".join(f"{k} {_fmt(row.get(k))}" for k in run.task.log_metrics)
    run.log(f"epoch {row['epoch']}/{run.fit_config.epochs}  lr {row['lr']:.2e}  train/loss {_fmt(row['train/loss'])}  "
            f"{shown}  {row['seconds']:.1f}s{' *' if improved else ''}")
    for w in row["warnings"]:
        run.log(f"  warning: {w}")
    if row["skipped_steps"]:
        run.log(f"  warning: {row['skipped_steps']} optimizer step(s) skipped for a non-finite loss"
                + ("; no step of this epoch was finite, so train/loss is NaN" if math.isnan(row["train/loss"]) else ""))


def _should_stop(run: Run, row: dict, on_epoch: Optional[OnEpoch]) -> Optional[str]:
    p, fit_config = run.progress, run.fit_config
    public = {k: v for k, v in row.items() if k not in ("warnings", "skipped_steps")}
    # rank 0 alone calls it (tracking and tuning talk to their servers once); all follow its answer
    if run.dist.rank0_answer(on_epoch and (lambda: bool(on_epoch(row["epoch"], public)))):
        run.log(f"stopped after epoch {row['epoch']} by the on_epoch callback")
        return "callback"
    if fit_config.patience and p.bad_epochs >= fit_config.patience and row["epoch"] < fit_config.epochs:
        run.log(f"early stopping: {fit_config.monitor} has not improved for {p.bad_epochs} epochs")
        return "early"
    return None


def _result(run: Run, stopped: Optional[str]) -> FitResult:
    p = run.progress
    if p.best_epoch < 0:
        raise UserError(f"no epoch produced a finite {run.fit_config.monitor}; no best model was saved in "
                        f"{run.run_dir}.")
    best = run.dist.broadcast_object(json.loads((run.run_dir / "val_metrics.json").read_text())
                                     if run.dist.is_main else None)
    best_scalars = {k: best[k] for k in run.task.metric_names() if k in best}
    run.log(f"best epoch {p.best_epoch}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in best_scalars.items()))
    return FitResult(run.run_dir, p.best_epoch, best_scalars, stopped)


@contextlib.contextmanager
def _explain_oom(batch_size: int, accumulate: int, phase: str):
    """GPU out of memory -> one sentence with the settings to change (same effective batch)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        half = max(1, batch_size // 2)
        raise UserError(
            f"the GPU ran out of memory during {phase} with train.batch_size={batch_size}; use "
            f"train.batch_size={half} train.accumulate={accumulate * 2} (the same effective batch), "
            "or lower data.image_size or use train.precision=bf16.") from None
