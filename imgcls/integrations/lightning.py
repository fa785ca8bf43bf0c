"""PyTorch Lightning: imgcls's parts as a ``LightningDataModule`` and a ``LightningModule``, and the
``train.engine: lightning`` engine, which runs a config through ``lightning.Trainer`` into the same run
folder as imgcls's own loop (so predict, evaluate, export and report work on it unchanged).

    dm = DataModule.from_config(cfg)
    module = Module.from_config(cfg, dm)
    lightning.Trainer(max_epochs=5, use_distributed_sampler=False, callbacks=[...]).fit(module, datamodule=dm)

The module logs the names metrics.csv uses (``val/f1_macro``, ``train/loss``, ...), so a user's own
callbacks (ModelCheckpoint, EarlyStopping on ``val/f1_macro``) and logger see imgcls's metrics.

What is the same as the explicit loop, and so tested equal to it: the model and its initial weights,
the batches (global order from (seed, epoch), each process's shard of it), the per-sample
augmentation from (seed, epoch, index), the loss (each micro-batch weighted by its share of its
accumulation window, with Lightning's division by ``accumulate_grad_batches`` undone, so a partial
last window stays exact), the optimizer, the LR schedule (imgcls's scheduler is not a torch
LRScheduler: the module steps it after every optimizer step and after validation, as the loop does),
EMA, and the validation metrics (every sample once, gathered across processes).

This module is a leaf behind an optional extra (``pip install 'imgcls[lightning]'``): nothing in imgcls
imports it unless train.engine=lightning.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from ..config import Config, to_yaml
from ..data.build import check_same_split
from ..data.pipeline import build_pipeline
from ..data.prep import make_mix
from ..device import channels_last
from ..engine.build import (Prepared, absolute_data_paths, ema_model, make_criterion, open_new_folder, prepare,
                           silent_log, write_run_files)
from ..engine.dist import DistContext
from ..engine.finetune import Freezer, finetune_param_groups
from ..engine.fit import FitResult, OnEpoch
from ..engine.loop import score_outputs, window_sizes
from ..engine.record import EpochWriter, Validation, improves
from ..engine.rundir import tensorboard_writer, truncate_metrics
from ..errors import UserError
from ..io import remove_temp_files
from ..optim import create_optimizer, create_scheduler, get_lr, scheduler_takes

try:
    import lightning as L
except ImportError as e:  # pragma: no cover - the extra is installed in CI
    raise UserError("train.engine=lightning needs PyTorch Lightning; install it with: "
                    "pip install 'imgcls[lightning]'.") from e

from ..config import optim_kwargs, sched_kwargs

LAST_CKPT = "last.ckpt"  # the Lightning engine's resumable checkpoint in the run folder
PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def _dist_of(trainer) -> DistContext:
    """The processes of ``trainer`` (Lightning's strategy has joined the process group by setup)."""
    if trainer is None or trainer.world_size == 1:
        return DistContext()
    return DistContext(trainer.world_size, trainer.global_rank, trainer.local_rank)


class DataModule(L.LightningDataModule):
    """imgcls's data for a Lightning Trainer: the split and targets of a config, its cache and batched
    augmentation, and loaders whose batches are each process's shard of one global order (so set
    ``use_distributed_sampler=False``: the loaders shard themselves)."""

    def __init__(self, prepared: Prepared, log: Callable[[str], None] = print):
        super().__init__()
        self.prepared, self.log_fn, self.data = prepared, log, None

    @classmethod
    def from_config(cls, cfg: Config, log: Callable[[str], None] = print) -> "DataModule":
        """Read the data of ``cfg`` now (file lists, labels, the split); loaders are built in ``setup``."""
        if not isinstance(cfg, Config):
            raise UserError(f"DataModule.from_config needs a Config (from imgcls.load_config), got {type(cfg).__name__}.")
        return cls(prepare(cfg, log), log)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.data is not None:
            return
        cfg, p = self.prepared.cfg, self.prepared
        trainer = self.trainer
        if cfg.train.batch_size == "auto":
            raise UserError("train.batch_size=auto is not supported with Lightning; set a number, e.g. 64.")
        if trainer is not None and trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise UserError("imgcls's DataModule shards its own batches; create the Trainer with "
                            "use_distributed_sampler=False.")
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        self.data = build_pipeline(cfg.data, cfg.train.seed, p.info, p.split, cfg.train.batch_size, device,
                                   _dist_of(trainer), self.log_fn)
        self.log_fn(self.data.summary)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        """The global micro-batch sizes of an epoch (the same every epoch)."""
        return tuple(len(b) for b in self.data.sampler.batches(0))

    def train_dataloader(self):
        return self.data.train_loader

    def val_dataloader(self):
        return self.data.val_loader


class Module(L.LightningModule):
    """imgcls's model, task, loss, optimizer, schedule, EMA and metrics for a Lightning Trainer."""

    def __init__(self, prepared: Prepared, datamodule: DataModule, model: torch.nn.Module):
        super().__init__()
        cfg = prepared.cfg
        self.prepared, self.dm, self.model = prepared, datamodule, model
        self.criterion = make_criterion(cfg, prepared.task, prepared.split, torch.device("cpu"))
        self.ema = ema_model(model, cfg.train.ema)
        if self.ema is not None:  # averaged, never trained: DDP must not wait for its gradients
            self.ema.requires_grad_(False)
        ft = cfg.finetune.freeze_epochs
        # model.freeze_bn holds BatchNorm from here on (the optimizer then leaves its affine parameters out)
        self.freezer = Freezer(model, ft, cfg.model.freeze_bn) if ft or cfg.model.freeze_bn else None
        self.metrics = prepared.task.create_metrics(prepared.split.classes)
        self.scheduler = None
        self.validation: Optional[Validation] = None  # the last validation pass (every sample once)
        self.epoch_train_loss = float("nan")
        self._outputs, self._step_seen = [], -1
        self._loss_sum, self._samples = torch.zeros((), dtype=torch.float64), 0

    @classmethod
    def from_config(cls, cfg: Config, datamodule: DataModule) -> "Module":
        """The module for ``datamodule``'s data; ``cfg`` must be the config the data module was built from."""
        p = datamodule.prepared
        if to_yaml(absolute_data_paths(cfg)) != to_yaml(p.cfg):
            raise UserError("Module.from_config needs the config its DataModule was built from; pass the same Config "
                            "to DataModule.from_config and Module.from_config.")
        torch.manual_seed(cfg.train.seed)  # the initial weights of imgcls's loop for the same train.seed
        return cls(p, datamodule, p.create_model(datamodule.log_fn))

    # ------------------------------------------------------------ set-up

    def setup(self, stage: Optional[str] = None) -> None:
        if self.freezer is not None and self.freezer.freeze_epochs and self.trainer.world_size > 1:
            raise UserError("finetune.freeze_epochs with train.engine=lightning runs on one process (Lightning's "
                            "DDP fixes the trainable parameters when it starts); use train.engine=explicit for "
                            "--nproc, or drop --nproc.")
        self.dm.setup(stage)
        device = self.trainer.strategy.root_device
        info, cfg = self.prepared.info, self.prepared.cfg
        if channels_last(device):
            self.model.to(memory_format=torch.channels_last)
        self.prep = info.batch_prep(device, mix=make_mix(cfg.data.mixup, cfg.data.cutmix, info.num_outputs,
                                                         self.prepared.task),
                                    augment=self.dm.data.augment, channels_last=channels_last(device))
        self.eval_prep = info.batch_prep(device, channels_last=channels_last(device))

    def configure_optimizers(self):
        cfg, o = self.prepared.cfg, self.prepared.cfg.optim
        groups = finetune_param_groups(self.model, o.lr, o.weight_decay, o.layer_decay, o.backbone_lr_mult)
        optimizer = create_optimizer(self.model, o.name, o.lr, o.weight_decay, groups=groups, **optim_kwargs(cfg))
        direction = self.prepared.task.direction(self.prepared.monitor)
        mode = {"mode": direction} if scheduler_takes(cfg.sched.name, "mode") else {}
        accumulate = self.trainer.accumulate_grad_batches
        self.scheduler = create_scheduler(optimizer, cfg.sched.name, epochs=self.trainer.max_epochs,
                                          steps_per_epoch=math.ceil(len(self.dm.batch_sizes) / accumulate),
                                          **sched_kwargs(cfg), **mode)
        return optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ------------------------------------------------------------ training

    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        if self.freezer is not None:  # finetune.freeze_epochs: the head alone until the unfreeze epoch
            change = self.freezer.start_epoch(epoch)
            if change:
                self.dm.log_fn(change)
        self.dm.data.sampler.set_epoch(epoch)
        self.prep.epoch = epoch  # the batched augmentation's per-sample draws: (seed, epoch, index)
        self._windows = window_sizes(self.dm.batch_sizes, self.trainer.accumulate_grad_batches)
        self._loss_sum, self._samples = torch.zeros((), dtype=torch.float64, device=self.device), 0

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets, index = batch
        x, y = self.prep(images, targets, index)
        loss = self.criterion(self(x).float(), y)
        n = images.shape[0]
        self._loss_sum += loss.detach().double() * n
        self._samples += n
        # Lightning divides by accumulate_grad_batches and DDP averages over processes: weight each
        # micro-batch by its share of its global window instead, as imgcls's loop does
        weight = n * self.trainer.world_size * self.trainer.accumulate_grad_batches / self._windows[batch_idx]
        return loss * weight

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.trainer.global_step
        if step != self._step_seen:  # an optimizer step happened
            self._step_seen = step
            self.scheduler.step_update(step)  # the LR of the next optimizer step
            if self.ema is not None:
                self.ema.update_parameters(self.model)

    # ------------------------------------------------------------ validation

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validates and is saved: the EMA when train.ema is on."""
        return self.ema.module if self.ema is not None else self.model

    def on_validation_epoch_start(self) -> None:
        self._outputs = []
        dist = _dist_of(self.trainer)
        dist.broadcast_module(self.model)  # rank 0's batch-norm statistics and EMA, on every process
        if self.ema is not None:
            dist.broadcast_module(self.ema)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets, index = batch
        logits = self.eval_model(self.eval_prep.images(images)).float()
        self._outputs.append((logits.cpu(), targets.cpu(), index.cpu()))

    def on_validation_epoch_end(self) -> None:
        dist = _dist_of(self.trainer)
        parts = [o for outs in dist.gather_objects(self._outputs) for o in outs]
        task = self.prepared.task
        self.validation = Validation(*score_outputs(parts, self.criterion, self.metrics, self.device,
                                                    task.decode_outputs))
        total = dist.all_sum(torch.stack([self._loss_sum.double().to(self.device),
                                          torch.tensor(float(self._samples), dtype=torch.float64,
                                                       device=self.device)]))
        self.epoch_train_loss = (total[0] / total[1]).item() if total[1] > 0 else float("nan")
        scalars = {k: float(v) for k, v in self.validation.scalars.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if not self.trainer.sanity_checking:
            scalars["train/loss"] = self.epoch_train_loss
            value = self.validation.scalars.get(self.prepared.monitor,
                                                self.epoch_train_loss if self.prepared.monitor == "train/loss" else None)
            self.scheduler.step_epoch(value)
        with warnings.catch_warnings():  # the same on every process (gathered): nothing to reduce
            warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\(")
            self.log_dict(scalars, sync_dist=False, rank_zero_only=False)

    # ------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["imgcls"] = {"scheduler": self.scheduler.state_dict(),
                                "ema": None if self.ema is None else self.ema.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored = checkpoint.get("imgcls") or {}

    def on_train_start(self) -> None:  # after Lightning has restored the optimizer (whose lr the schedule sets)
        restored = getattr(self, "_restored", None)
        if restored:
            self.scheduler.load_state_dict(restored["scheduler"])
            if self.ema is not None and restored.get("ema"):
                self.ema.load_state_dict(restored["ema"])
        self._step_seen = self.trainer.global_step


class _RunFolder(L.Callback):
    """The run folder, as imgcls's loop writes it: metrics.csv rows, TensorBoard, the best model,
    early stopping on train.patience. Rank 0 writes; every process takes the same decisions.
    (Its log function is ``say``: Lightning replaces every callback's ``log`` with the module's.)"""

    def __init__(self, run_dir: Path, prepared: Prepared, dist: DistContext, log: Callable[[str], None],
                 on_epoch: Optional[OnEpoch] = None):
        self.run_dir, self.prepared, self.dist, self.say, self.on_epoch = run_dir, prepared, dist, log, on_epoch
        self.is_main = dist.is_main
        self.info = prepared.info
        self.best_value, self.best_epoch, self.bad_epochs = None, -1, 0
        self.writer, self.t0 = None, 0.0

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "info_extra": dict(self.info.extra), "info_epoch": self.info.epoch,
                "info_value": self.info.monitor_value}

    def load_state_dict(self, d: dict) -> None:
        self.best_value, self.best_epoch, self.bad_epochs = d["best_value"], d["best_epoch"], d["bad_epochs"]
        self.info = self.info.replace(extra=d["info_extra"], epoch=d["info_epoch"], monitor_value=d["info_value"])

    def on_fit_start(self, trainer, module) -> None:
        if self.is_main:
            self.writer = tensorboard_writer(self.run_dir, purge_step=trainer.current_epoch + 1)

    def on_fit_end(self, trainer, module) -> None:
        if self.writer is not None:
            self.writer.close()

    def on_train_epoch_start(self, trainer, module) -> None:
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module: Module) -> None:
        p, v = self.prepared, module.validation
        plan_direction = p.task.direction(p.monitor)
        epoch = trainer.current_epoch + 1
        train_loss = module.epoch_train_loss
        value = v.scalars.get(p.monitor, train_loss if p.monitor == "train/loss" else None)
        row = {"epoch": epoch, "lr": get_lr(trainer.optimizers[0]), "train/loss": train_loss, **v.scalars,
               "seconds": round(time.perf_counter() - self.t0, 3), "skipped_steps": 0}
        record = EpochWriter(self.run_dir, p.task, p.split, p.monitor)
        if self.is_main:
            record.append(row, self.writer)
        improved = improves(value, self.best_value, plan_direction, module.eval_model)
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.is_main:
                self.info = record.save_best(self.info, module.eval_model, epoch, value, v, train_loss)
        else:
            self.bad_epochs += 1
        shown = "  ".join(f"{k} {row[k]:.4f}" for k in p.task.log_metrics if isinstance(row.get(k), float))
        self.say(f"epoch {epoch}/{trainer.max_epochs}  lr {row['lr']:.2e}  train/loss {train_loss:.4f}  {shown}  "
                 f"{row['seconds']:.1f}s{' *' if improved else ''}")
        public = {k: v for k, v in row.items() if k != "skipped_steps"}
        # rank 0 calls it; every process follows its answer
        if self.dist.rank0_answer(self.on_epoch and (lambda: bool(self.on_epoch(epoch, public)))):
            self.say(f"stopped after epoch {epoch} by the on_epoch callback")
            trainer.should_stop = True
            return
        patience = p.cfg.train.patience
        if patience and self.bad_epochs >= patience and epoch < trainer.max_epochs:
            self.say(f"early stopping: {p.monitor} has not improved for {self.bad_epochs} epochs")
            trainer.should_stop = True


def load_checkpoint(path: Path) -> dict:
    """A Lightning engine's last.ckpt: tensors and plain values only (``weights_only=True``, as last.pt)."""
    import pickle

    from ..engine.checkpoint import load_error_reason
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"'{path}' is damaged or holds objects other than tensors and plain values and was not "
                        f"loaded ({load_error_reason(e)}); restore it or start a "
                        "new run.") from None


def _trainer_kwargs(cfg: Config) -> dict:
    """lightning.Trainer's arguments for a config (the device, precision, accumulation, clipping, DDP)."""
    t = cfg.train
    accelerator = {"auto": "auto", "cpu": "cpu", "mps": "mps"}.get(t.device, "gpu" if t.device.startswith("cuda")
                                                                  else t.device)
    kw = dict(max_epochs=t.epochs, accelerator=accelerator, precision=PRECISION[t.precision],
              accumulate_grad_batches=t.accumulate, gradient_clip_val=cfg.optim.clip_grad,
              deterministic=t.deterministic or None, num_sanity_val_steps=0, use_distributed_sampler=False,
              enable_model_summary=False, logger=False, enable_progress_bar=bool(t.progress is True),
              sync_batchnorm=t.sync_bn)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # under torchrun: Lightning's DDP strategy over torchrun's processes
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        kw.update(strategy="ddp", devices=local, num_nodes=world // local)
    else:
        kw.update(devices=1)
    return kw


def fit_config(cfg: Config, dist: DistContext, log: Callable[[str], None] = print,
               run_dir: Optional[Path] = None, resuming: bool = False,
               on_epoch: Optional[OnEpoch] = None,
               on_start: Optional[Callable[[Path], None]] = None) -> tuple[FitResult, Optional[object]]:
    """``train.engine=lightning``: train ``cfg`` with lightning.Trainer into a new run folder (or continue
    ``run_dir`` from its last.ckpt); returns the result and the folder lock (rank 0's)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    if not dist.is_main:
        log = silent_log
    dm = DataModule.from_config(cfg, log)
    module = Module.from_config(dm.prepared.cfg, dm)
    prepared, lock = dm.prepared, None
    if resuming:
        if dist.is_main:
            check_same_split(prepared.split, run_dir / "split")
            remove_temp_files(run_dir)
    else:
        run_dir, lock = open_new_folder(cfg.run, dist)
        if dist.is_main:
            write_run_files(run_dir, prepared.cfg, prepared.split, torch.device("cpu"), prepared.info.weights)
    log(f"run folder: {run_dir}")
    if on_start is not None and dist.is_main:  # the folder exists: tracking opens its run
        on_start(run_dir)
    log(f"engine: lightning {L.__version__}; data: {len(prepared.split.train)} train / {len(prepared.split.val)} val "
        f"images, {prepared.task.classes_text(prepared.split.classes)}; model {prepared.info.architecture}")
    ckpt = run_dir / LAST_CKPT
    start = None
    if resuming and ckpt.is_file():
        start = load_checkpoint(ckpt)["epoch"] + 1
        if dist.is_main:
            truncate_metrics(run_dir / "metrics.csv", start)
        log(f"resuming {run_dir} at epoch {start + 1} from {ckpt.name}")
    recorder = _RunFolder(run_dir, prepared, dist, log, on_epoch)
    last = ModelCheckpoint(dirpath=run_dir, filename=LAST_CKPT[:-5], save_top_k=1, every_n_epochs=1,
                           enable_version_counter=False, save_on_train_epoch_end=True)
    with _quiet_lightning():
        trainer = L.Trainer(callbacks=[recorder, last], default_root_dir=str(run_dir),
                            **_trainer_kwargs(prepared.cfg))
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if start is not None else None, weights_only=True)
    if recorder.best_epoch < 0:
        raise UserError(f"no epoch produced a finite {prepared.monitor}; no best model was saved in {run_dir}.")
    best = {}
    if dist.is_main:
        import json
        saved = json.loads((run_dir / "val_metrics.json").read_text())
        best = {k: saved[k] for k in prepared.task.metric_names() if k in saved}
        log(f"best epoch {recorder.best_epoch}: " + "  ".join(f"{k} {v:.4f}" for k, v in best.items()
                                                              if isinstance(v, float)))
    stopped = "early" if trainer.should_stop and trainer.current_epoch < trainer.max_epochs else None
    return FitResult(run_dir, recorder.best_epoch, best, stopped), lock


@contextlib.contextmanager
def _quiet_lightning():
    """imgcls's own log speaks for the engine: Lightning's banners (accelerators found, tips) and the
    notes that do not apply to a run folder imgcls manages are kept out of it; its warnings stay."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            yield
    finally:
        logger.setLevel(level)


