"""Randomness is drawn per sample from (seed, epoch, index): workers do not change a thing."""
from __future__ import annotations

import torch

from imgcls.data.build import DataSources, build_split
from imgcls.data.dataset import EpochBatchSampler, ImageDataset, make_loader
from imgcls.data.transforms import eval_transform, normalize, train_transform


def _epochs(folder, workers, epochs=(0, 1), start_batch=0, preset="strong"):
    split = build_split(DataSources(str(folder)), 0.25, seed=0)
    ds = ImageDataset(split.train.paths, split.train.labels, 3, train_transform(preset, 12, 3), seed=7)
    sampler = EpochBatchSampler(len(ds), 10, seed=7)
    loader = make_loader(ds, sampler, workers)
    out = []
    for e in epochs:
        sampler.set_epoch(e, start_batch)
        out.append([(x.clone(), y.clone(), i.clone()) for x, y, i in loader])
    return out


def test_same_batches_and_augmentations_with_0_and_2_workers(tiny_folder):
    a = _epochs(tiny_folder, 0)
    b = _epochs(tiny_folder, 2)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb) > 1
        for (xa, ya, ia), (xb, yb, ib) in zip(ea, eb):
            assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)
    # a new epoch brings a new order and new augmentations
    assert not torch.equal(a[0][0][2], a[1][0][2])
    i = a[0][0][2][0].item()
    pos = {int(k): n for n, k in enumerate(torch.cat([t[2] for t in a[1]]))}
    x1 = torch.cat([t[0] for t in a[1]])[pos[i]]
    assert not torch.equal(a[0][0][0][0], x1)


def test_mid_epoch_start_sees_the_remaining_batches(tiny_folder):
    full = _epochs(tiny_folder, 0, epochs=(1,))[0]
    rest = _epochs(tiny_folder, 0, epochs=(1,), start_batch=2)[0]
    assert len(rest) == len(full) - 2
    for (xa, _, ia), (xb, _, ib) in zip(full[2:], rest):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)


def test_loading_does_not_touch_the_global_rng(tiny_folder):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _epochs(tiny_folder, 0, epochs=(0,))
    assert torch.equal(torch.rand(3), expected)


def test_workers_return_uint8_and_normalisation_is_per_batch(tiny_folder):
    split = build_split(DataSources(str(tiny_folder)), 0.25, seed=0)
    ds = ImageDataset(split.val.paths, split.val.labels, 3, eval_transform(16))
    x, y, i = next(iter(make_loader(ds, EpochBatchSampler(len(ds), 4, 0, shuffle=False), 0)))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16)
    z = normalize(x, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    torch.testing.assert_close(z, (x.float() / 255 - 0.5) / 0.25)
