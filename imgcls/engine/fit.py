"""A whole run: data -> model -> loss/optimizer/scheduler -> epochs -> run folder.

Checkpointing, early stopping and logging are ordinary calls in the epoch loop below.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import __version__
from ..config import Config, load_config, to_yaml
from ..data import build_split, demo_root, write_split_csv
from ..data.build import check_same_split
from ..data.dataset import EpochBatchSampler, ImageDataset, balanced_weights, make_loader
from ..data.decode import image_channels
from ..data.transforms import default_mean_std, eval_transform, get_preset, train_transform
from ..errors import UserError
from ..losses import class_weights_from_counts, create_loss
from ..metrics import METRIC_NAMES, ClassificationMetrics, metric_direction, recall_warnings
from ..models import count_parameters, create_model
from ..optim import create_optimizer, create_scheduler, get_lr
from .checkpoint import (atomic_write_json, atomic_write_text, load_last, remove_temp_files, rng_state,
                         save_last, save_weights, set_rng_state)
from .loop import EpochState, fit_micro_batch, train_epoch, validate
from .rundir import (append_metrics_row, create_run_dir, env_info, tensorboard_writer,
                     truncate_metrics, val_predictions_csv)
from .signals import StopFlag, TrainingInterrupted



@dataclass
class RunResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict
    stopped: Optional[str] = None   # 'early' | 'signal' | None


# ---------------------------------------------------------------- set-up helpers

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is '{name}' but no CUDA GPU is visible; use train.device=auto or cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("train.device is 'mps' but Apple MPS is not available; use train.device=auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def detect_channels(paths: list[str], setting) -> int:
    """1 when every sampled image is grayscale, else 3 (a header read, no full decode)."""
    if setting != "auto":
        return int(setting)
    step = max(1, len(paths) // 64)
    return 1 if all(image_channels(p) == 1 for p in paths[::step][:64]) else 3


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


# ---------------------------------------------------------------- the run

def train(cfg: Config, resume: Optional[str | Path] = None, epochs: Optional[int] = None,
          log=print) -> RunResult:
    """Train with ``cfg`` into a new run folder, or continue ``resume`` (only the epoch count may change)."""
    start = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"'{run_dir}' is not a run folder (no config.yaml); pass the folder printed by "
                            "'imgcls train'.")
        cfg = load_config(run_dir / "config.yaml")
        # No last.pt and no metrics.csv: killed before its first checkpoint, so nothing was
        # trained yet and the run starts again in its own folder. Otherwise last.pt is required.
        if (run_dir / "last.pt").exists() or (run_dir / "metrics.csv").exists():
            start = load_last(run_dir / "last.pt")
    if epochs is not None:
        cfg = cfg.replace(**{"train.epochs": epochs})

    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "16" and device.type != "cuda":
        raise UserError("train.precision=16 needs a CUDA GPU (it uses a GradScaler); use bf16 or 32 on "
                        f"'{device.type}'.")
    seed_everything(cfg.train.seed, cfg.train.deterministic)

    # ---- data
    d = cfg.data
    root, val_root, csv_path, val_csv = d.root, d.val_root, d.csv, d.val_csv
    if not (root or csv_path):
        demo = demo_root()
        root, val_root, csv_path, val_csv = str(demo / "train"), str(demo / "val"), None, None
        log(f"no data configured: training on the MNIST-5k demo in {demo}")
    split = build_split(root, csv_path, val_root, val_csv, d.val_fraction, cfg.train.seed,
                        d.path_column, d.label_column, d.group_column, d.classes)
    split = _drop_bad_images(split, d.on_bad_image, log)
    if start is not None:
        check_same_split(split, run_dir / "split")
    classes, K = split.classes, len(split.classes)
    channels = detect_channels(split.train.paths, d.channels)
    mean, std = default_mean_std(channels)
    mean, std = list(d.mean or mean), list(d.std or std)
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"data.mean and data.std need {channels} value(s) for {channels}-channel images.")
    preset = get_preset(d.augment)

    # ---- model, loss, optimizer
    model = create_model(cfg.model.name, K, channels, cfg.model.pretrained, cfg.model.drop_rate).to(device)
    cw = class_weights_from_counts(split.counts("train"), cfg.loss.class_weights)
    criterion = create_loss(cfg.loss.name, K, class_weights=None if cw is None else cw.to(device),
                            gamma=cfg.loss.gamma, alpha=cfg.loss.alpha, smoothing=cfg.loss.smoothing)
    optimizer = create_optimizer(model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay,
                                 momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
    batch_size, accumulate = _resolve_batch(cfg, start, model, criterion, optimizer, device, channels, K, log)

    # ---- data loaders
    train_ds = ImageDataset(split.train.paths, split.train.labels, channels,
                            train_transform(d.augment, d.image_size, channels), seed=cfg.train.seed)
    val_ds = ImageDataset(split.val.paths, split.val.labels, channels, eval_transform(d.image_size, d.crop_pct))
    weights = balanced_weights(split.train.labels, K) if d.sampler == "balanced" else None
    sampler = EpochBatchSampler(len(train_ds), batch_size, cfg.train.seed, True, weights)
    val_sampler = EpochBatchSampler(len(val_ds), batch_size * 2, 0, shuffle=False)
    pin = device.type == "cuda"
    train_loader = make_loader(train_ds, sampler, d.num_workers, pin)
    val_loader = make_loader(val_ds, val_sampler, d.num_workers, pin)

    # ---- schedule
    steps_per_epoch = math.ceil(len(sampler) / accumulate)
    s = cfg.sched
    scheduler = create_scheduler(optimizer, s.name, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch,
                                 warmup_epochs=s.warmup_epochs, step_size=s.step_size, gamma=s.gamma,
                                 min_lr=s.min_lr, plateau_mode=metric_direction(cfg.train.monitor),
                                 plateau_patience=s.patience, plateau_factor=s.factor)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "16" else None
    mix = _make_mix(d.mixup, d.cutmix, K)
    metrics = ClassificationMetrics(K, classes)
    direction = metric_direction(cfg.train.monitor)

    # ---- run folder and bookkeeping
    first_epoch, global_step, best_value, best_epoch, bad_epochs = 0, 0, None, -1, 0
    epoch_state: Optional[EpochState] = None
    if start is None:
        if resume is None:
            run_dir = create_run_dir(cfg)
        else:
            log(f"{run_dir} has no last.pt yet (stopped before its first checkpoint): starting it again")
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        atomic_write_json(run_dir / "env.json", env_info(device, cfg.train.seed))
        (run_dir / "split").mkdir(exist_ok=True)
        write_split_csv(split.train, classes, run_dir / "split" / "train.csv")
        write_split_csv(split.val, classes, run_dir / "split" / "val.csv")
        if split.bad:
            atomic_write_text(run_dir / "bad_images.csv", "path,problem\n" + "".join(
                f"{p},{why}\n" for p, why in split.bad))
    else:
        model.load_state_dict(start["model"])
        optimizer.load_state_dict(start["optimizer"])
        scheduler.load_state_dict(start["scheduler"])
        if scaler is not None and start.get("scaler"):
            scaler.load_state_dict(start["scaler"])
        first_epoch, global_step = start["epoch"], start["global_step"]
        best_value, best_epoch, bad_epochs = start["best_value"], start["best_epoch"], start["bad_epochs"]
        if start.get("epoch_state"):
            es = start["epoch_state"]
            epoch_state = EpochState(es["batches_done"], es["loss_sum"].double(), es["samples"], es["skipped_steps"])
        set_rng_state(start["rng"])
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))  # train.epochs may have changed
        log(f"resuming {run_dir} at epoch {first_epoch + 1}"
            + (f", batch {epoch_state.batches_done + 1}" if epoch_state else ""))
    if resume is not None:
        # A kill can land after an epoch's rows/files were written but before its last.pt:
        # forget what comes after last.pt (it is redone identically) and half-written temp files.
        remove_temp_files(run_dir)
        truncate_metrics(run_dir / "metrics.csv", first_epoch)

    writer = tensorboard_writer(run_dir, purge_step=first_epoch + 1 if resume is not None else None)
    meta = {
        "format": 1, "architecture": cfg.model.name, "classes": classes, "channels": channels,
        "image_size": d.image_size, "resize": int(round(d.image_size / d.crop_pct)), "crop_pct": d.crop_pct,
        "mean": mean, "std": std, "augment": d.augment, "allows_flip": preset.allows_flip,
        "epoch": 0, "monitor": {"name": cfg.train.monitor, "value": None},
        "train_counts": split.counts("train"), "imgcls": __version__,
    }
    log(f"run folder: {run_dir}")
    log(f"data: {len(split.train)} train / {len(split.val)} val images, {K} classes, {channels} channel(s); "
        f"model {cfg.model.name} ({count_parameters(model) / 1e6:.2f}M parameters) on {device}")

    def checkpoint(epoch: int, es: Optional[EpochState]) -> None:
        save_last(run_dir / "last.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "epoch": epoch, "global_step": global_step, "best_value": best_value, "best_epoch": best_epoch,
            "bad_epochs": bad_epochs, "rng": rng_state(), "imgcls": __version__,
            "batch_size": batch_size, "accumulate": accumulate,
            "epoch_state": None if es is None else {
                "batches_done": es.batches_done, "loss_sum": es.loss_sum.detach().cpu(),
                "samples": es.samples, "skipped_steps": es.skipped_steps},
        })

    stopped = None
    every = cfg.train.checkpoint_every_steps
    if start is None:
        checkpoint(0, None)  # resumable from the start: a kill before epoch 1 ends loses nothing
    with StopFlag() as stop:
        for epoch in range(first_epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            es = epoch_state or EpochState()
            epoch_state = None
            sampler.set_epoch(epoch, start_batch=es.batches_done)
            sizes = [len(b) for b in sampler.batches(epoch)][es.batches_done:]

            def after_step(step: int, st: EpochState) -> bool:
                nonlocal global_step
                global_step = step
                if stop.signum is not None:
                    return True
                if every and step % every == 0 and st.batches_done < len(sampler):
                    checkpoint(epoch, st)
                return stop.signum is not None  # a signal during that save: stop now, not a step later

            with _explain_oom(batch_size, accumulate, "training"):
                es, global_step = train_epoch(
                    model, train_loader, criterion, optimizer, scheduler, device=device, mean=mean, std=std,
                    batch_sizes=sizes, accumulate=accumulate, precision=cfg.train.precision,
                    scaler=scaler, clip_grad=cfg.optim.clip_grad, mix=mix, state=es, global_step=global_step,
                    skip_nonfinite=cfg.train.skip_nonfinite, epoch=epoch, after_step=after_step,
                    progress=cfg.train.progress, check_every=every)
            if stop.signum is not None and es.batches_done < len(sampler):
                checkpoint(epoch, es)
                raise TrainingInterrupted(run_dir, stop.signum)

            with _explain_oom(batch_size, accumulate, "validation"):
                scalars, details, probs, indices = validate(
                    model, val_loader, criterion, metrics, device=device, mean=mean, std=std,
                    precision=cfg.train.precision)
            train_loss = (es.loss_sum / max(es.samples, 1)).item()
            value = scalars.get(cfg.train.monitor, train_loss if cfg.train.monitor == "train/loss" else None)
            scheduler.step_epoch(value)
            row = {"epoch": epoch + 1, "lr": get_lr(optimizer), "train/loss": train_loss, **scalars,
                   "seconds": round(time.perf_counter() - t0, 3)}
            append_metrics_row(run_dir / "metrics.csv", row)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()

            finite = value is not None and math.isfinite(value) and all(
                torch.isfinite(p).all() for p in model.parameters())
            improved = finite and (best_value is None or (value < best_value if direction == "min" else value > best_value))
            if improved:
                best_value, best_epoch, bad_epochs = value, epoch + 1, 0
                meta.update(epoch=epoch + 1, monitor={"name": cfg.train.monitor, "value": value})
                save_weights(run_dir / "best.safetensors", model)
                atomic_write_json(run_dir / "model.json", meta)
                atomic_write_text(run_dir / "val_predictions.csv", val_predictions_csv(
                    split.val.paths, split.val.labels, probs, indices, classes))
                atomic_write_json(run_dir / "val_metrics.json", {
                    "epoch": epoch + 1, "monitor": cfg.train.monitor, **scalars, "train/loss": train_loss,
                    **details})
            else:
                bad_epochs += 1
            checkpoint(epoch + 1, None)

            mark = " *" if improved else ""
            log(f"epoch {epoch + 1}/{cfg.train.epochs}  lr {row['lr']:.2e}  train/loss {train_loss:.4f}  "
                f"val/loss {_fmt(scalars.get('val/loss'))}  val/acc {_fmt(scalars['val/acc'])}  "
                f"val/f1_macro {_fmt(scalars['val/f1_macro'])}  {row['seconds']:.1f}s{mark}")
            for w in recall_warnings(scalars, details):
                log(f"  warning: {w}")
            if es.skipped_steps:
                log(f"  warning: {es.skipped_steps} optimizer step(s) skipped for a non-finite loss")
            if stop.signum is not None:
                raise TrainingInterrupted(run_dir, stop.signum)
            if cfg.train.patience and bad_epochs >= cfg.train.patience and epoch + 1 < cfg.train.epochs:
                log(f"early stopping: {cfg.train.monitor} has not improved for {bad_epochs} epochs")
                stopped = "early"
                break
    if writer is not None:
        writer.close()
    if best_epoch < 0:
        raise UserError(f"no epoch produced a finite {cfg.train.monitor}; no best model was saved in {run_dir}.")
    best = json.loads((run_dir / "val_metrics.json").read_text())
    best_scalars = {k: best[k] for k in METRIC_NAMES if k in best}
    log(f"best epoch {best_epoch}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in best_scalars.items()))
    if cfg.run.report:
        from ..report import write_report
        log(f"report: {write_report(run_dir)}")
    log(f"run folder: {run_dir}")
    return RunResult(run_dir, best_epoch, best_scalars, stopped)


AUTO_BATCH_START = 256  # train.batch_size=auto: effective batch 256 x train.accumulate


def _resolve_batch(cfg: Config, start: Optional[dict], model, criterion, optimizer, device, channels: int,
                   num_classes: int, log) -> tuple[int, int]:
    """(micro-batch, accumulate). ``auto`` halves from 256 until a training step fits in GPU memory,
    raising accumulate so the effective batch stays 256 x train.accumulate; a resume reuses the
    sizes it started with, so its batches are those of the uninterrupted run."""
    if cfg.train.batch_size != "auto":
        return cfg.train.batch_size, cfg.train.accumulate
    if start is not None and "batch_size" in start:
        return start["batch_size"], start["accumulate"]
    if device.type != "cuda":
        raise UserError(f"train.batch_size=auto probes GPU memory, but the device is '{device.type}'; "
                        "set a number instead, e.g. train.batch_size=64.")
    size = cfg.data.image_size
    micro, accumulate = fit_micro_batch(model, criterion, optimizer, device=device,
                                        image_shape=(channels, size, size), num_classes=num_classes,
                                        batch_size=AUTO_BATCH_START, accumulate=cfg.train.accumulate,
                                        precision=cfg.train.precision)
    log(f"train.batch_size=auto: micro-batch {micro} x accumulate {accumulate} "
        f"(effective batch {micro * accumulate})")
    return micro, accumulate


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


def _make_mix(mixup: float, cutmix: float, num_classes: int):
    if not (mixup or cutmix):
        return None
    from torchvision.transforms import v2
    ops = []
    if mixup:
        ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix:
        ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def _drop_bad_images(split, on_bad: str, log):
    """Quick scan before training: 'error' names every bad file at once, 'skip' leaves them out."""
    from ..data.decode import check_image
    bad = []
    for side in ("train", "val"):
        s = getattr(split, side)
        problems = [(i, check_image(p)) for i, p in enumerate(s.paths)]
        bad_here = [(i, why) for i, why in problems if why]
        if not bad_here:
            continue
        bad += [(s.paths[i], why) for i, why in bad_here]
        if on_bad == "skip":
            drop = {i for i, _ in bad_here}
            setattr(split, side, s.subset([i for i in range(len(s)) if i not in drop]))
    if bad and on_bad == "error":
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise UserError(f"{len(bad)} unreadable image(s): {listing}; remove them or set data.on_bad_image=skip.")
    if bad:
        log(f"skipping {len(bad)} unreadable image(s); listed in bad_images.csv")
    split.bad = bad
    return split
