"""Build a run: from a validated Config to a ``Run`` holding everything the epoch loop needs.

``build_run`` does every check that can fail before the run folder is created, then creates it (a
new run) or restores ``last.pt`` into the Run (a resume). ``Run.state_dict()`` is the one place
that knows what last.pt holds. Tests replace a Run's parts (criterion, validate inputs...) directly.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .. import __version__
from ..config import Config, loss_kwargs, optim_kwargs, sched_kwargs, to_yaml
from ..data import DataSplit, build_split, demo_root, write_split_csv
from ..data.build import DataSources, check_same_split
from ..data.dataset import EpochBatchSampler
from ..data.decode import ImageLimits, image_channels
from ..data.pipeline import build_pipeline
from ..data.prep import BatchPrep, make_mix
from ..data.transforms import INTERPOLATIONS, default_mean_std, get_preset
from ..device import channels_last, place_model, resolve_device, rng_state, seed_everything, set_rng_state
from ..errors import UserError, first_sentence
from ..io import atomic_write_json, csv_text, atomic_write_text, remove_temp_files
from ..losses import class_weights_from_counts, create_loss
from ..models.modelinfo import ModelInfo
from ..models import create_model
from ..models.hub import WeightsSource, resolve_weights
from ..optim import create_optimizer, create_scheduler, scheduler_takes
from ..tasks import Task, get_task
from .dist import DistContext, device_for
from .finetune import Freezer, finetune_param_groups
from .loop import EpochState, StepConfig, fit_micro_batch
from .rundir import RunLock, create_run_dir, env_info, truncate_metrics

AUTO_BATCH_START = 256  # train.batch_size=auto: effective batch 256 x train.accumulate


@dataclass(frozen=True)
class FitConfig:
    """What the epoch loop decides by: fixed for a run."""
    epochs: int
    monitor: str                 # the metric that picks best.safetensors, stops early, drives plateau
    direction: str               # 'max' | 'min', from the task's table
    patience: Optional[int]      # early stopping: epochs without improvement; None = off
    checkpoint_every: int        # mid-epoch last.pt every N optimizer steps; 0 = off
    progress: bool               # per-batch bar (the per-epoch line is always printed)


@dataclass
class Progress:
    """The run's counters; ``position`` is written by train_epoch, the rest by fit."""
    position: EpochState = field(default_factory=EpochState)
    best_value: Optional[float] = None
    best_epoch: int = -1          # 1-based epoch of best.safetensors; -1 = none yet
    bad_epochs: int = 0           # epochs since the monitor last improved

    def state_dict(self) -> dict:
        p = self.position
        return {"epoch": p.epoch, "global_step": p.global_step, "best_value": self.best_value,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "epoch_state": None if p.batches_done == 0 else {
                    "batches_done": p.batches_done, "loss_sum": p.loss_sum.detach().cpu(),
                    "samples": p.samples, "skipped_steps": p.skipped_steps}}

    def load_state_dict(self, d: dict) -> None:
        es = d.get("epoch_state") or {}
        self.position = EpochState(d["epoch"], d["global_step"], es.get("batches_done", 0),
                                   es["loss_sum"].double() if es else torch.zeros((), dtype=torch.float64),
                                   es.get("samples", 0), es.get("skipped_steps", 0))
        self.best_value, self.best_epoch, self.bad_epochs = d["best_value"], d["best_epoch"], d["bad_epochs"]


@dataclass
class Run:
    cfg: Config
    run_dir: Path
    task: Task
    info: ModelInfo               # the model record; fit updates epoch/monitor value at each best
    split: DataSplit
    device: torch.device
    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler  # enabled for precision 16 only (a no-op otherwise)
    sampler: EpochBatchSampler
    train_loader: object
    val_loader: object
    step_config: StepConfig       # accumulation, precision, clipping, non-finite policy: what train_epoch reads
    prep: BatchPrep               # training batches (with MixUp/CutMix)
    eval_prep: BatchPrep          # validation batches
    metrics: object
    fit_config: FitConfig         # epochs, monitor, patience: what fit decides by
    progress: Progress = field(default_factory=Progress)
    resumed: bool = False
    log: Callable[[str], None] = print
    lock: Optional[RunLock] = None  # held from the folder's creation (or the resume) until released
    ema: Optional[nn.Module] = None  # train.ema: AveragedModel of the weights, updated every optimizer step

    compiled: Optional[nn.Module] = None  # train.compile: torch.compile(model), sharing its parameters
    dist: DistContext = field(default_factory=DistContext)  # torchrun's processes; the world of 1 otherwise
    ddp: Optional[nn.Module] = None  # DistributedDataParallel(model) when dist is active
    freezer: Optional[Freezer] = None  # finetune.freeze_epochs / model.freeze_bn; None when neither is set

    @property
    def train_model(self) -> nn.Module:
        """What trains: the compiled model, else DDP's wrapper, else the model (all share parameters)."""
        return self.compiled if self.compiled is not None else self.ddp if self.ddp is not None else self.model

    @property
    def eval_model(self) -> nn.Module:
        """What validation, best.safetensors and so predict/export/report use: the EMA when on."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        """What last.pt holds: tensors and plain values only (loads with weights_only=True).

        Under data parallelism every process calls it (the epoch's loss sums and each process's
        random state are gathered); rank 0's copy is the one written. In-epoch progress is also kept
        in samples, so a resume with another process count (same global batch) finds its place."""
        progress = self.progress.state_dict()
        rng = rng_state()
        if self.dist.active:
            ranks_rng = self.dist.gather_objects(rng)
            es = progress["epoch_state"]
            if es is not None:
                es["loss_sum"] = self.dist.all_sum(self.progress.position.loss_sum.detach()).cpu()
                es["samples"] = int(self.dist.all_sum(torch.tensor([es["samples"]]))[0])
        else:
            ranks_rng = None
        if progress["epoch_state"] is not None:
            done = self.progress.position.batches_done
            progress["epoch_state"]["samples_done"] = sum(self.step_config.batch_sizes[:done])
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() or None,
                **progress, "rng": rng, "rng_ranks": ranks_rng, "imgcls": __version__,
                "batch_size": self.sampler.batch_size, "accumulate": self.step_config.accumulate,
                "world": self.dist.world,
                "ema": None if self.ema is None else self.ema.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.model.load_state_dict(d["model"])
        self.optimizer.load_state_dict(d["optimizer"])
        self.scheduler.load_state_dict(d["scheduler"])
        if d.get("scaler"):
            self.scaler.load_state_dict(d["scaler"])
        self.progress.load_state_dict(_place_in_epoch(d, self.step_config.batch_sizes, self.dist.rank))
        if self.ema is not None:
            if not d.get("ema"):
                raise UserError("this run's last.pt has no EMA state (it was started without train.ema); resume "
                                "it without train.ema, or start a new run.")
            self.ema.load_state_dict(d["ema"])
        same_world = d.get("world", 1) == self.dist.world and d.get("rng_ranks")
        set_rng_state(d["rng_ranks"][self.dist.rank] if same_world else d["rng"])


def _place_in_epoch(d: dict, sizes: tuple[int, ...], rank: int) -> dict:
    """last.pt's progress for this process: the micro-batch to continue from on this run's schedule
    (found from the samples done when the batch layout changed with the process count), and the
    epoch's loss sums on rank 0 only (every process adds its own, and they are summed at the end)."""
    es = d.get("epoch_state")
    if not es:
        return d
    es = dict(es)
    done = es.get("samples_done")
    if done is not None:
        cumulative = [sum(sizes[:j + 1]) for j in range(len(sizes))]
        if done not in cumulative:
            raise UserError(f"this run's last.pt stopped after {done} samples of epoch {d['epoch'] + 1}, which is not "
                            "a batch boundary with the new batch layout; resume with the process count and "
                            "train.batch_size it ran with.")
        es["batches_done"] = cumulative.index(done) + 1
    if rank != 0:
        es["loss_sum"], es["samples"] = torch.zeros((), dtype=torch.float64), 0
    return {**d, "epoch_state": es}


# ---------------------------------------------------------------- the pieces, in data-flow order

def _device(cfg: Config) -> torch.device:
    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "16" and device.type != "cuda":
        raise UserError("train.precision=16 needs a CUDA GPU (it uses a GradScaler); use bf16 or 32 on "
                        f"'{device.type}'.")
    return device


def _split(cfg: Config, task: Task, log) -> DataSplit:
    d = cfg.data
    root, val_root, csv_path, val_csv = d.root, d.val_root, d.csv, d.val_csv
    if not (root or csv_path):
        demo = demo_root()
        root, val_root, csv_path, val_csv = str(demo / "train"), str(demo / "val"), None, None
        log(f"no data configured: training on the MNIST-5k demo in {demo}")
    src = DataSources.from_config(cfg, root, csv_path, val_root, val_csv)
    split = build_split(src, d.val_fraction, cfg.train.seed, task, (d.folds_csv, d.fold) if d.folds_csv else None)
    return _drop_bad_images(split, d.on_bad_image, ImageLimits(d.min_image_side, d.max_image_pixels), log)


def _drop_bad_images(split: DataSplit, on_bad: str, limits: ImageLimits, log) -> DataSplit:
    """Quick scan before training: 'error' names every bad file at once, 'skip' leaves them out."""
    from ..data.decode import check_image
    bad = []
    for side in ("train", "val"):
        s = getattr(split, side)
        bad_here = [(i, why) for i, why in ((i, check_image(p, limits)) for i, p in enumerate(s.paths)) if why]
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


def _detect_channels(paths: list[str], setting) -> int:
    """1 when every sampled image is grayscale, else 3 (a header read, no full decode)."""
    if setting != "auto":
        return int(setting)
    step = max(1, len(paths) // 64)
    return 1 if all(image_channels(p) == 1 for p in paths[::step][:64]) else 3


def _preprocessing(d, channels: int, weights: WeightsSource, log) -> dict:
    """mean, std, crop_pct, interpolation: the config's where set, else the pretrained weights' own (what
    the backbone was trained and evaluated with), else imgcls's defaults; each choice that involves the
    weights is logged."""
    mean, std = default_mean_std(channels)
    theirs = dict(weights.preprocessing) if weights.kind != "none" else {}
    for key in ("mean", "std"):  # a grayscale run: the mean of the RGB values (as the first conv sums them)
        if key in theirs and len(theirs[key]) != channels:
            theirs[key] = [sum(theirs[key]) / len(theirs[key])] * channels
    odd = theirs.get("interpolation")
    if odd is not None and odd not in INTERPOLATIONS:  # e.g. 'random' or 'lanczos': not a torchvision filter
        log(f"note: the weights' interpolation '{odd}' is not one imgcls resizes with; using bilinear")
        del theirs["interpolation"]
    out, taken = {}, []
    for key, given, default in (("mean", d.mean, mean), ("std", d.std, std), ("crop_pct", d.crop_pct, 1.0),
                                ("interpolation", d.interpolation, "bilinear")):
        if given is not None:
            out[key] = given
            if key in theirs and _shown(theirs[key]) != _shown(given):
                log(f"note: data.{key}={given} differs from the weights' {theirs[key]} (the setting wins)")
        elif key in theirs:
            out[key], taken = theirs[key], taken + [f"{key}={_shown(theirs[key])}"]
        else:
            out[key] = default
    if taken:
        log(f"preprocessing from the weights' pretrained_cfg (data.* not set): {', '.join(taken)}")
    return out


def _shown(v):
    return v if isinstance(v, str) else np_round(v)


def np_round(v):
    """Values as a log shows them (4 decimals)."""
    return [round(float(x), 4) for x in v] if isinstance(v, (list, tuple)) else round(float(v), 4)


def _model_info(cfg: Config, task: Task, split: DataSplit, monitor: str, weights: WeightsSource,
                log=print) -> ModelInfo:
    d = cfg.data
    channels = _detect_channels(split.train.paths, d.channels)
    pre = _preprocessing(d, channels, weights, log)
    mean, std = list(pre["mean"]), list(pre["std"])
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"data.mean and data.std need {channels} value(s) for {channels}-channel images.")
    return ModelInfo(architecture=weights.architecture, classes=tuple(split.classes), channels=channels,
                     image_size=d.image_size, crop_pct=float(pre["crop_pct"]), mean=tuple(mean), std=tuple(std),
                     interpolation=pre["interpolation"],
                     augment=d.augment, allows_flip=get_preset(d.augment).allows_flip, task=task.name,
                     monitor=monitor, train_counts=tuple(split.counts("train")), imgcls=__version__,
                     min_side=d.min_image_side, max_pixels=d.max_image_pixels, extra=dict(split.label_record),
                     weights=weights.record() if weights.kind != "none" else {})


def _check_before_folder(cfg: Config, model: nn.Module, split: DataSplit, monitor: str) -> None:
    """Mistakes that would otherwise surface only after training, caught before the folder exists."""
    if monitor == "val/auroc" and len(set(split.val.labels)) < 2:
        raise UserError("train.monitor=val/auroc needs at least two classes in the validation set (AUROC is "
                        f"undefined with {len(set(split.val.labels))}); monitor val/f1_macro or add validation images.")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if cfg.train.batch_size == 1 and has_bn:
        raise UserError(f"train.batch_size=1 cannot train model '{cfg.model.name}': batch norm needs at least 2 "
                        "samples per batch; use train.batch_size=2 or more (with train.accumulate for memory).")


def make_criterion(cfg: Config, task: Task, split: DataSplit, device: torch.device) -> nn.Module:
    own = task.criterion({})  # multi-head: each head's own loss, weighted
    if own is not None:
        return own.to(device)
    cw = class_weights_from_counts(split.counts("train"), cfg.loss.class_weights) if task.per_class_sampling else None
    kwargs = loss_kwargs(cfg)
    if kwargs.get("pos_weight") == "balanced":  # each label's negatives / positives in the training data
        pos, n = split.counts("train"), len(split.train)
        kwargs["pos_weight"] = [(n - p) / p if p else 1.0 for p in pos]
    return create_loss(task.resolve_loss(cfg.loss.name), task.head_size(split.classes),
                       class_weights=None if cw is None else cw.to(device), **kwargs).to(device)


def _resolve_batch(cfg: Config, start: Optional[dict], model, criterion, optimizer, device, info: ModelInfo,
                   log) -> tuple[int, int]:
    """(micro-batch, accumulate). ``auto`` halves from 256 until a training step fits in GPU memory,
    raising accumulate so the effective batch stays 256 x train.accumulate; a resume reuses the
    sizes it started with, so its batches are those of the uninterrupted run."""
    if cfg.train.batch_size != "auto":
        return cfg.train.batch_size, cfg.train.accumulate
    if start is not None and "batch_size" in start:  # the micro-batch the run started with
        return start["batch_size"], start["accumulate"]
    if device.type != "cuda":
        raise UserError(f"train.batch_size=auto probes GPU memory, but the device is '{device.type}'; "
                        "set a number instead, e.g. train.batch_size=64.")
    size = info.image_size
    micro, accumulate = fit_micro_batch(model, criterion, optimizer, device=device,
                                        image_shape=(info.channels, size, size), num_classes=info.num_outputs,
                                        batch_size=AUTO_BATCH_START, accumulate=cfg.train.accumulate,
                                        precision=cfg.train.precision)
    log(f"train.batch_size=auto: micro-batch {micro} x accumulate {accumulate} "
        f"(effective batch {micro * accumulate})")
    return micro, accumulate


def absolute_data_paths(cfg: Config) -> Config:
    """Data paths as absolute paths, so config.yaml and split/*.csv mean the same files wherever the
    run folder is opened from (evaluate, predict, report, resume from another directory)."""
    keys = ("data.root", "data.csv", "data.val_root", "data.val_csv", "data.folds_csv", "data.relabel", "data.exclude")
    changes = {}
    for key in keys:
        value = getattr(cfg.data, key.split(".")[1])
        if value:
            changes[key] = str(Path(value).expanduser().resolve())
    return cfg.replace(**changes) if changes else cfg


def _show_progress(setting) -> bool:
    """train.progress: auto shows the per-batch bar only on a terminal (not in CI logs or files)."""
    return sys.stderr.isatty() if setting == "auto" else bool(setting)


# ---------------------------------------------------------------- build

@dataclass(frozen=True)
class Prepared:
    """A config with its data read: the task (configured from the training targets), the split and
    the model record. What both engines start from (imgcls's loop here, Lightning's in imgcls.integrations.lightning)."""
    cfg: Config                  # with absolute data paths
    task: Task
    split: DataSplit
    info: ModelInfo
    monitor: str
    weights: WeightsSource       # resolved before any image was read

    def create_model(self, log=print) -> nn.Module:
        """The configured architecture with this data's head and channels (seeded: the same initial
        weights for the same train.seed, whichever engine asks)."""
        c, w = self.cfg, self.weights
        return create_model(w.architecture, self.info.num_outputs, self.info.channels,
                            Path(w.file) if w.file else False, c.model.drop_rate, image_size=self.info.image_size,
                            log=log)


def pin_weights(cfg: Config, log: Callable[[str], None] = print) -> tuple[Config, WeightsSource]:
    """Resolve the config's pretrained weights (cache, hub, folder or file) and pin a hub snapshot's commit
    in model.revision, so config.yaml, --resume, cv folds and tune trials load that same revision."""
    weights = resolve_weights(cfg.model.name, cfg.model.pretrained, cfg.model.revision)
    if weights.kind == "none":
        return cfg, weights
    if weights.kind == "file":  # a bare file says nothing of how its images were normalised
        weights = dataclasses.replace(weights, pretrained_cfg={})
    log(f"weights: {weights.repo or weights.file}" + (f" @ {weights.revision}" if weights.revision else "")
        + f" (sha256 {weights.sha256[:12]})")
    if weights.kind == "hub" and cfg.model.revision != weights.revision:
        cfg = cfg.replace(**{"model.name": cfg.model.name.split("@")[0], "model.revision": weights.revision})
    return cfg, weights


def prepare(cfg: Config, log: Callable[[str], None] = print, *, absolute: bool = True) -> Prepared:
    """Read the data of ``cfg`` (the split, the task's targets) and seed every generator."""
    if absolute:
        cfg = absolute_data_paths(cfg)
    cfg, weights = pin_weights(cfg, log)  # before any image is read: a missing weight fails at once
    task = get_task(cfg.task.type).from_config(cfg)
    monitor = task.resolve_monitor(cfg.train.monitor)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    split = _split(cfg, task, log)
    # what the task learns from the training targets (regression: their mean/std) goes into model.json
    split.label_record = {**split.label_record, **task.fit(split.train.labels, split.classes)}
    task = task.configure({**task.record(split.classes), **split.label_record})
    split.task = task
    return Prepared(cfg, task, split, _model_info(cfg, task, split, monitor, weights, log), monitor, weights)


def build_run(cfg: Config, *, run_dir: Optional[Path] = None, start: Optional[dict] = None,
              log: Callable[[str], None] = print, dist: Optional[DistContext] = None) -> Run:
    """Everything for ``fit``. ``run_dir`` None creates a new folder; else it is the folder being
    resumed, with ``start`` its last.pt (None when killed before the first checkpoint). ``dist``:
    torchrun's processes (every one builds the same run; only rank 0 logs and writes)."""
    dist = dist or DistContext()
    if not dist.is_main and not dist.own_log:  # rank 0 speaks for the job; under --nproc each rank has its log
        log = silent_log
    device = device_for(dist, _device(cfg))
    prepared = prepare(cfg, log, absolute=start is None and run_dir is None)
    cfg, task, split, info, monitor = prepared.cfg, prepared.task, prepared.split, prepared.info, prepared.monitor
    _check_same_data(dist, split)
    if start is not None and dist.is_main:  # the run folder is rank 0's
        check_same_split(split, Path(run_dir) / "split")
    model = prepared.create_model(log)
    if dist.active and cfg.train.sync_bn:
        if device.type != "cuda":
            raise UserError("train.sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm runs on GPU modules only); "
                            "set train.sync_bn=false on the CPU.")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model, nhwc = place_model(model, device), channels_last(device)
    _check_before_folder(cfg, model, split, monitor)
    criterion = make_criterion(cfg, task, split, device)
    freezer = _freezer(cfg, model, dist)
    o = cfg.optim
    groups = finetune_param_groups(model, o.lr, o.weight_decay, o.layer_decay, o.backbone_lr_mult)
    optimizer = create_optimizer(model, o.name, o.lr, o.weight_decay, groups=groups, **optim_kwargs(cfg))
    batch_size, accumulate = dist.broadcast_object(  # every process with rank 0's probe
        _resolve_batch(cfg, start, model, criterion, optimizer, device, info, log))
    _check_global_batch(start, dist.world, batch_size, accumulate)
    if dist.active:  # dropout and MixUp draw from each process's own stream (the model itself is rank 0's)
        from ..data.dataset import derive_seed
        torch.manual_seed(derive_seed(cfg.train.seed, 7, dist.rank))
        log(f"data parallel: {dist.world} processes ({dist.backend}) x batch {batch_size}"
            f"{f' x accumulate {accumulate}' if accumulate > 1 else ''} = global batch {dist.world * batch_size * accumulate}")
    data = build_pipeline(cfg.data, cfg.train.seed, info, split, batch_size, device, dist, log)
    log(data.summary)
    sampler, train_loader, val_loader = data.sampler, data.train_loader, data.val_loader
    sizes = tuple(len(b) for b in sampler.batches(0))  # the same every epoch: order changes, sizes do not
    direction = task.direction(monitor)
    mode = {"mode": direction} if scheduler_takes(cfg.sched.name, "mode") else {}
    scheduler = create_scheduler(optimizer, cfg.sched.name, epochs=cfg.train.epochs,
                                 steps_per_epoch=math.ceil(len(sizes) / accumulate), **sched_kwargs(cfg), **mode)
    t = cfg.train
    run = Run(cfg=cfg, run_dir=Path(run_dir) if run_dir else Path(), task=task, info=info, split=split,
              device=device, model=model, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
              scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "16"),
              sampler=sampler, train_loader=train_loader, val_loader=val_loader,
              step_config=StepConfig(sizes, accumulate, t.precision, cfg.optim.clip_grad, t.skip_nonfinite,
                              t.checkpoint_every_steps, dist.world),
              prep=info.batch_prep(device, mix=make_mix(cfg.data.mixup, cfg.data.cutmix, info.num_outputs, task),
                                   augment=data.augment, channels_last=nhwc),
              eval_prep=info.batch_prep(device, channels_last=nhwc), metrics=task.create_metrics(split.classes),
              fit_config=FitConfig(t.epochs, monitor, direction, t.patience, t.checkpoint_every_steps,
                             _show_progress(t.progress) and dist.is_main),
              resumed=start is not None, log=log, ema=ema_model(model, t.ema), dist=dist, ddp=_ddp(model, dist, device),
              freezer=freezer)
    if t.compile:
        run.compiled = _compile(run.ddp if run.ddp is not None else model, info, device, log)
    _open_folder(run, start)
    return run


def _freezer(cfg: Config, model: nn.Module, dist: DistContext) -> Optional[Freezer]:
    """model.freeze_bn holds BatchNorm from here on (before the optimizer, which then leaves its affine
    parameters out); finetune.freeze_epochs is applied by fit at each epoch's start."""
    n, freeze_bn = cfg.finetune.freeze_epochs, cfg.model.freeze_bn
    if not (n or freeze_bn):
        return None
    return Freezer(model, n, freeze_bn)


def rewrap_ddp(run: Run) -> None:
    """A new DistributedDataParallel after the trainable parameters changed (finetune.freeze_epochs): DDP
    reduces the gradients of the parameters that required them when it was built, and waits for exactly
    those. The old wrapper's gradient hooks go with it; every process rebuilds at the same epoch start."""
    if run.ddp is None:
        return
    run.ddp = run.compiled = None
    gc.collect()  # the old reducer (and its autograd hooks) is gone before the new one registers its own
    run.ddp = _ddp(run.model, run.dist, run.device)
    if run.cfg.train.compile:
        run.compiled = _compile(run.ddp, run.info, run.device, run.log)


def silent_log(message: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for the job (both engines use it)."""


def _ddp(model: nn.Module, dist: DistContext, device: torch.device) -> Optional[nn.Module]:
    """torch's DistributedDataParallel over ``model`` (it broadcasts rank 0's weights at once)."""
    if not dist.active:
        return None
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _check_same_data(dist: DistContext, split: DataSplit) -> None:
    """Every process must read the same files in the same split (on every node: the same data paths)."""
    if not dist.active:
        return
    import hashlib
    digest = hashlib.sha1("\n".join([*split.train.paths, "|", *split.val.paths]).encode()).hexdigest()
    digests = dist.gather_objects(digest)
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise UserError(f"process {differ[0]} sees other data than process 0 ({len(split.train)} / {len(split.val)} "
                        "images here); every node needs the same data at the same paths.")


def _check_global_batch(start: Optional[dict], world: int, batch_size: int, accumulate: int) -> None:
    """A resume may change the number of processes only with the global batch kept: processes x
    train.batch_size x train.accumulate as the run started."""
    if start is None or "batch_size" not in start:
        return
    w0, b0, a0 = start.get("world", 1), start["batch_size"], start["accumulate"]
    if w0 * b0 * a0 == world * batch_size * accumulate:
        return
    fix = w0 * b0 * a0 / (world * accumulate)
    hint = (f"pass train.batch_size={int(fix)}" if fix == int(fix) else
            f"choose train.batch_size and train.accumulate with {world} x batch x accumulate = {w0 * b0 * a0}")
    raise UserError(f"this run trained with {w0} process(es) x batch {b0} x accumulate {a0} = {w0 * b0 * a0} samples "
                    f"per optimizer step, but the resume has {world} x {batch_size} x {accumulate} = "
                    f"{world * batch_size * accumulate}; {hint} to continue it exactly.")


def _announce(run_dir: Path) -> None:
    """Tell the ``--nproc`` launcher where the run folder is (for the resume command and rank logs)."""
    where = os.environ.get("IMGCLS_RUN_DIR_FILE")
    if where:
        Path(where).write_text(str(run_dir))


def _compile(model: nn.Module, info: ModelInfo, device: torch.device, log) -> Optional[nn.Module]:
    """torch.compile(model), tried on one small batch first: where compiling fails (no compiler, an
    unsupported model), a warning and eager mode."""
    try:
        compiled = torch.compile(model)
        x = torch.zeros(2, info.channels, info.image_size, info.image_size, device=device)
        was = model.training
        with torch.no_grad():
            compiled.train(was)(x)
        return compiled
    except Exception as e:  # noqa: BLE001 -- any compiler failure means: train eagerly
        log(f"warning: train.compile failed ({type(e).__name__}: {first_sentence(e)}); "
            "training in eager mode.")
        return None


def ema_model(model: nn.Module, decay: Optional[float]) -> Optional[nn.Module]:
    """torch's own AveragedModel with the EMA update; batch-norm statistics are averaged with the same
    decay as the weights (use_buffers=True), so the averaged model validates with its own statistics."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _open_folder(run: Run, start: Optional[dict]) -> None:
    """A new run writes its config, provenance and split; a resume restores last.pt and forgets
    what a kill left after it (rows of later epochs, half-written temporary files)."""
    if start is not None:
        run.load_state_dict(start)
        if not run.dist.is_main:
            return
        atomic_write_text(run.run_dir / "config.yaml", to_yaml(run.cfg))  # train.epochs may have changed
        remove_temp_files(run.run_dir)
        p = run.progress.position
        truncate_metrics(run.run_dir / "metrics.csv", p.epoch)
        run.log(f"resuming {run.run_dir} at epoch {p.epoch + 1}" + (f", batch {p.batches_done + 1}" if p.batches_done else ""))
        return
    r = run.cfg.run
    if run.run_dir == Path() or not run.dist.is_main:
        run.run_dir, run.lock = open_new_folder(r, run.dist)
        if not run.dist.is_main:
            return
    else:  # resumed before its first checkpoint: nothing was trained, start again in its own folder
        run.dist.broadcast_object(str(run.run_dir))
        run.log(f"{run.run_dir} has no last.pt yet (stopped before its first checkpoint): starting it again")
        remove_temp_files(run.run_dir)
        truncate_metrics(run.run_dir / "metrics.csv", 0)
    write_run_files(run.run_dir, run.cfg, run.split, run.device, run.info.weights)


def open_new_folder(r, dist: DistContext) -> tuple[Path, Optional[RunLock]]:
    """A new run folder per ``run.*`` (``r``), created and locked by rank 0, whose name every
    process receives; the lock is rank 0's (None elsewhere)."""
    if not dist.is_main:  # rank 0 names the folder; the others write nothing
        name = dist.broadcast_object(None)
        if not name:
            raise UserError("process 0 could not create the run folder (its message says why).")
        return Path(name), None
    try:
        run_dir = create_run_dir(r.dir, r.root, r.name)
    except UserError:
        dist.broadcast_object("")  # the others stop too
        raise
    dist.broadcast_object(str(run_dir))
    lock = RunLock(run_dir).acquire()
    _announce(run_dir)
    return run_dir, lock


def write_run_files(folder: Path, cfg: Config, split: DataSplit, device: torch.device,
                    weights: Optional[dict] = None) -> None:
    """What a new run folder holds before training: config, provenance (with the pretrained weights'
    source, ``ModelInfo.weights``, where there are any), the split."""
    atomic_write_text(folder / "config.yaml", to_yaml(cfg))
    env = env_info(device, cfg.train.seed)
    if weights:  # where the starting weights came from, by content: name, repo, commit, file, sha256
        env["weights"] = {k: weights[k] for k in ("kind", "name", "repo", "revision", "file", "sha256")
                          if weights.get(k) is not None}
    atomic_write_json(folder / "env.json", env)
    if cfg.data.relabel or cfg.data.exclude:  # which fixes this run's data had, by content
        from ..data.fixes import fixes_record
        atomic_write_json(folder / "data_fixes.json", fixes_record(cfg.data.relabel, cfg.data.exclude))
    (folder / "split").mkdir(exist_ok=True)
    write_split_csv(split.train, split, folder / "split" / "train.csv")
    write_split_csv(split.val, split, folder / "split" / "val.csv")
    if split.bad:
        atomic_write_text(folder / "bad_images.csv", csv_text(["path", "problem"], split.bad))
