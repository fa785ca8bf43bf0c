"""The data pipeline of a run: how batches reach the model (moved here from engine/build.py).

``build_pipeline`` decides the cache (``data.cache``: stores in memory, on disk, or shared per node
under torchrun), where augmentation runs (batched on the device over the cached store, or per image
in DataLoader workers), and builds the samplers and loaders of both sides of the split.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch

from ..config import DataConfig
from ..errors import UserError
from ..models.modelinfo import ModelInfo
from .build import DataSplit
from .dataset import EpochBatchSampler, ImageDataset, balanced_weights, make_loader
from .transforms import train_transform


class Processes(Protocol):
    """What the pipeline asks of the distributed context (``imgcls.engine.dist.DistContext``): which
    process this is, and a barrier; the single-process run is the world of 1."""
    world: int
    rank: int
    local_rank: int

    @property
    def active(self) -> bool: ...

    def barrier(self) -> None: ...


@dataclass
class DataPipeline:
    """How batches reach the model: the loaders, and (batched path) the augmentation on the device."""
    sampler: EpochBatchSampler
    train_loader: object
    val_loader: object
    augment: Optional[Callable] = None   # BatchAugment, or None (workers augment)
    summary: str = ""                    # one line for the log: the cache and where augmentation runs


def _num_workers(setting, device: torch.device, batched: bool) -> int:
    """data.num_workers=auto: none where they cannot help (the batched cached path, or a CPU of 2 cores
    or fewer whose cores the model's threads already fill: bench/bench_predict.py), else up to 8."""
    if setting != "auto":
        return int(setting)
    cores = os.cpu_count() or 1
    if batched or (device.type == "cpu" and cores <= 2):
        return 0
    return min(8, cores - 1) if device.type == "cuda" else 2


def _build_stores(d: DataConfig, info: ModelInfo, split: DataSplit, log, dist: Processes):
    """(train store, val store, where) per data.cache; (None, None, None) when off. Under torchrun
    local rank 0 of each node builds first while the others wait; they then map its disk cache."""
    from .store import StoreSpec, build_store, choose, shared_root, stored_side, unlink_store
    train_spec = StoreSpec("train", d.image_size, 1.0, info.channels)
    where = choose(d.cache, len(split.train) + len(split.val), train_spec)
    if where is None:
        return None, None, None
    t0 = time.perf_counter()
    workers = 0 if (os.cpu_count() or 1) <= 2 else min(8, (os.cpu_count() or 1) - 1)
    eval_spec = StoreSpec("eval", info.image_size, info.crop_pct, info.channels, info.interpolation)
    root, shared = None, False
    if dist.active and where == "memory":  # one copy per node, in shared memory, instead of one per process
        side = stored_side(d.image_size)
        root = shared_root(info.channels * (len(split.train) * side * side + len(split.val) * info.image_size ** 2))
        shared = root is not None
        dist.barrier()  # every process has decided before anyone writes into /dev/shm
    kind = "disk" if shared else where
    if dist.active and dist.local_rank != 0:
        dist.barrier()  # local rank 0 builds (or finds) the cache first
    train = build_store(split.train.paths, train_spec, kind, workers, log, root=root)
    val = build_store(split.val.paths, eval_spec, kind, workers, log, eval_view=info.eval_transform(), root=root)
    if dist.active and dist.local_rank == 0:
        dist.barrier()
    if shared:
        train.gather(torch.zeros(1, dtype=torch.long)), val.gather(torch.zeros(1, dtype=torch.long))  # map now
        dist.barrier()  # every process has mapped the segment: its files can go
        if dist.local_rank == 0:
            unlink_store(train), unlink_store(val)
        where = "memory, shared by this node's processes (/dev/shm)"
    mb = (train.nbytes + val.nbytes) / 2**20
    log(f"cache: {where}{' (data.cache=auto)' if d.cache == 'auto' else ''}, {len(train)} training images at "
        f"{train.shape[2]}x{train.shape[3]} + {len(val)} validation images at {val.shape[2]}x{val.shape[3]} "
        f"({mb:.1f} MB), ready in {time.perf_counter() - t0:.1f} s")
    return train, val, where


def build_pipeline(d: DataConfig, seed: int, info: ModelInfo, split: DataSplit, batch_size: int,
                   device: torch.device, dist: Processes, log: Callable[[str], None] = print) -> DataPipeline:
    """The loaders of ``split`` per the data settings ``d`` (``cfg.data``); ``seed`` is train.seed (the
    shuffle order and augmentation draw from it); ``batch_size`` the micro-batch of one process."""
    from .batchaug import BatchAugment, batch_plan
    from .dataset import CachedLoader
    task = split.task
    plan = batch_plan(d.augment)
    if d.augment_on == "device" and plan is None:
        raise UserError(f"data.augment_on=device, but preset '{d.augment}' has no batched form (it runs in "
                        "workers); use data.augment_on=auto or a preset among none, digits, light, default.")
    train_store, val_store, where = _build_stores(d, info, split, log, dist)
    batched = train_store is not None and plan is not None and d.augment_on != "workers"
    workers = _num_workers(d.num_workers, device, batched)
    weights = None
    if d.sampler == "balanced":  # multiclass: its classes; multi-head: the combined classes of task.combine
        codes, n = task.sampling_classes(split.train.labels, split.classes)
        weights = balanced_weights(codes, n)
    sampler = EpochBatchSampler(len(split.train), batch_size, seed, True, weights, dist.world, dist.rank)
    val_sampler = EpochBatchSampler(len(split.val), batch_size * 2, 0, shuffle=False, world=dist.world,
                                    rank=dist.rank)
    pin = device.type == "cuda"
    train_targets = task.target_tensor(split.train.labels, split.classes)
    val_targets = task.target_tensor(split.val.labels, split.classes)
    if device.type == "cuda" and train_store is not None:  # gather batches where the model is, if it fits
        free, _ = torch.cuda.mem_get_info(device)
        if train_store.nbytes + val_store.nbytes < free // 4:
            train_store, val_store = train_store.to(device), val_store.to(device)
    if val_store is not None:
        val_loader = CachedLoader(val_store, val_targets, val_sampler, pin)
    else:
        val_loader = make_loader(ImageDataset(split.val.paths, val_targets, info.channels, info.eval_transform()),
                                 val_sampler, workers, pin)
    if batched:
        train_loader = CachedLoader(train_store, train_targets, sampler, pin)
        augment = BatchAugment(plan, d.image_size, seed)
        where_aug = f"batched on {device.type} (preset {d.augment})"
    else:
        train_ds = ImageDataset(split.train.paths, train_targets, info.channels,
                                train_transform(d.augment, d.image_size, info.channels), seed=seed,
                                store=train_store)
        train_loader, augment = make_loader(train_ds, sampler, workers, pin), None
        why = ("no cache" if train_store is None else "data.augment_on=workers" if plan is not None
               else f"preset {d.augment} has no batched form")
        where_aug = f"per image in {workers} worker(s)" if workers else "per image in the main process"
        where_aug += f" ({why})"
    summary = f"data path: {'cache ' + where if where else 'decoding every epoch'}; augmentation {where_aug}"
    return DataPipeline(sampler, train_loader, val_loader, augment, summary)
