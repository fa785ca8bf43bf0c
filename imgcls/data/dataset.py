"""Dataset, sampler and loader with randomness drawn per sample from (seed, epoch, index).

The shuffling order of an epoch depends only on (seed, epoch); the augmentation of a sample
only on (seed, epoch, index). So results do not depend on the number of workers, and a
resumed run (even mid-epoch) sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .buffers import BufferPool
from .decode import load_image


def shard(batch: list, world: int, rank: int) -> list:
    """Process ``rank``'s contiguous part of a global batch: sizes differ by at most one, the first
    ranks take the extra samples, and the parts laid end to end are the batch itself (nothing padded)."""
    base, extra = divmod(len(batch), world)
    start = rank * base + min(rank, extra)
    return batch[start:start + base + (rank < extra)]

_ORDER, _AUGMENT = 0, 1  # stream ids, so the order and the augmentation never share a seed


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class ImageDataset(Dataset):
    """Items are keyed by (epoch, index); returns (uint8 image [C,H,W], label, index)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], channels: int,
                 transform: Optional[Callable] = None, seed: int = 0, store=None):
        self.paths = list(paths)
        self.labels = list(labels)
        self.channels = channels
        self.transform = transform
        self.seed = seed
        self.store = store  # an ImageStore: images by index, decoded once (imgcls.data.store)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        img = self.store[index] if self.store is not None else load_image(self.paths[index], channels=self.channels)
        if self.transform is not None:
            # Seed only the CPU generator the transforms draw from (torch.manual_seed would also
            # queue CUDA seeding, 0.5 ms a call), and restore it: with num_workers=0 the main
            # process's RNG (dropout, init, MixUp) must not depend on the data.
            gen = torch.default_generator
            saved, py_saved = gen.get_state(), random.getstate()
            s = derive_seed(self.seed, _AUGMENT, epoch, index)
            gen.manual_seed(s)
            random.seed(s)
            try:
                img = self.transform(img)
            finally:
                gen.set_state(saved)
                random.setstate(py_saved)
        return img, self.labels[index], index


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys; the order is a function of (seed, epoch) alone.

    ``weights`` (one per sample) switches to sampling with replacement, e.g. class-balanced.
    ``start_batch`` skips the first batches of the current epoch (mid-epoch resume).

    Under data parallelism (``world`` processes) the batches are global, of ``batch_size * world``
    samples, and each process yields its contiguous shard of every one (``rank``'s part, nothing
    padded), so N processes x batch B see the samples one process with batch N*B sees. A final
    batch with fewer than 2 samples per process is merged into the previous one: batch norm cannot
    train on one sample (in one process: a final batch of a single sample).
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True,
                 weights: Optional[Sequence[float]] = None, world: int = 1, rank: int = 0):
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.world, self.rank = world, rank
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(derive_seed(self.seed, _ORDER, epoch))
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        if self.shuffle:
            return torch.randperm(self.n, generator=g)
        return torch.arange(self.n)

    def batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global batches (every process's samples), in order."""
        idx, size = self.order(epoch).tolist(), self.global_batch
        out = [idx[i:i + size] for i in range(0, self.n, size)]
        if len(out) > 1 and len(out[-1]) < 2 * self.world:
            out[-2].extend(out.pop())
        return out

    def __len__(self) -> int:
        size = self.global_batch
        full = math.ceil(self.n / size)
        if full > 1 and 0 < self.n % size < 2 * self.world:
            full -= 1
        return full

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """This process's shard of each remaining batch; an empty shard (a validation batch smaller than
        the number of processes) is skipped: validation gathers every process's outputs afterwards."""
        for b in self.batches(self.epoch)[self.start_batch:]:
            mine = shard(b, self.world, self.rank) if self.world > 1 else b
            if mine:
                yield [(self.epoch, i) for i in mine]


def balanced_weights(labels: Sequence[int], num_classes: int) -> list[float]:
    """Per-sample weights so that every class is drawn equally often in expectation."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    return [1.0 / counts[y] for y in labels]


def make_loader(dataset: ImageDataset, sampler: EpochBatchSampler, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    # Own generator: the DataLoader draws a base seed per iterator, and must not take it from
    # the global RNG (dropout, MixUp), or a resumed run would draw different numbers.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(0))


class CachedLoader:
    """Batches gathered straight from an ImageStore in the main process (no workers, no per-image
    collation): (uint8 images [N, C, H, W], targets, dataset indices), in the sampler's order. The
    images are pinned for a CUDA device, or gathered on the device when the store lives there."""

    def __init__(self, store, targets, sampler: EpochBatchSampler, pin_memory: bool = False):
        self.store, self.sampler, self.pin = store, sampler, pin_memory
        self.pool = BufferPool()   # gathered batches reused once consumed (data/buffers.py)
        self.targets = targets if torch.is_tensor(targets) else torch.as_tensor(targets)

    @property
    def batch_sampler(self) -> EpochBatchSampler:
        """As a DataLoader names it (Lightning reads it)."""
        return self.sampler

    def __len__(self) -> int:
        return len(self.sampler) - self.sampler.start_batch

    def __iter__(self):
        for keys in self.sampler:
            idx = torch.as_tensor([i for _, i in keys], dtype=torch.long)
            images = self.store.gather(idx, None if self.pin else self.pool)
            if self.pin and images.device.type == "cpu":
                images = images.pin_memory()
            yield images, self.targets[idx], idx
