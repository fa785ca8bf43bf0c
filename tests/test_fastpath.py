"""The fast data path: the decoded cache (memory and disk: pixels, invalidation, torn files, two processes),
batched augmentation on the device (against per-image application and torch's own interpolate/flip),
identical batches across worker counts and cache settings, and EMA against torch's AveragedModel."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import imgcls
from conftest import small_config
from imgcls.cli import main
from imgcls.data.batchaug import PLANS, BatchAugment, box_theta, uniforms, warp
from imgcls.data.decode import load_image
from imgcls.data.store import StoreSpec, build_store, cache_dir, list_cache
from imgcls.data.transforms import eval_transform


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def photos(tmp_path):
    """12 RGB photos of mixed sizes (so the train store resizes) as JPEG and PNG."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        h, w = (20 + i, 30) if i % 2 else (33, 24 + i)
        p = tmp_path / "img" / f"{i}.{'jpg' if i % 3 else 'png'}"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _quiet(*a):
    pass


@pytest.mark.parametrize("where", ["memory", "disk"])
def test_cached_pixels_equal_direct_decoding(photos, cache, where):
    ev = build_store(photos, StoreSpec("eval", 16, 0.875, 3), where, log=_quiet,
                     eval_view=eval_transform(16, 0.875))
    tr = build_store(photos, StoreSpec("train", 16, 1.0, 3), where, log=_quiet)
    assert tr.shape == (12, 3, 19, 19)  # mixed sizes: short side resized to ceil(16 / 0.875), centre-cropped
    for i, p in enumerate(photos):
        img = load_image(p, channels=3)
        assert torch.equal(ev[i], eval_transform(16, 0.875)(img))  # exactly what predict computes
        assert torch.equal(tr[i], eval_transform(19, 1.0)(img))
    assert (list(cache.glob("*.u8")) != []) == (where == "disk")


def test_same_size_images_are_stored_as_they_are(tmp_path, cache):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (14, 17), dtype=np.uint8)).save(p)
        paths.append(str(p))
    tr = build_store(paths, StoreSpec("train", 16, 1.0, 1), "memory", log=_quiet)
    assert tr.shape == (5, 1, 14, 17)
    assert all(torch.equal(tr[i], load_image(p, channels=1)) for i, p in enumerate(paths))


def test_disk_cache_is_reused_and_invalidated_by_any_change(photos, cache):
    spec = StoreSpec("eval", 16, 1.0, 3)
    view = eval_transform(16, 1.0)
    said = []
    build_store(photos, spec, "disk", log=said.append, eval_view=view)
    build_store(photos, spec, "disk", log=said.append, eval_view=view)
    assert len(said) == 1 and "mapped from" in said[0]  # the second run maps the first one's file
    assert len(list_cache()) == 1
    # a changed file, an added or removed file, another decode size: a new key, never the old pixels
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(photos[3])
    os.utime(photos[3], ns=(1, 10**18))
    changed = build_store(photos, spec, "disk", log=said.append, eval_view=view)
    assert torch.equal(changed[3], eval_transform(16, 1.0)(load_image(photos[3], channels=3)))
    build_store(photos[:-1], spec, "disk", log=said.append, eval_view=view)
    build_store(photos, StoreSpec("eval", 12, 1.0, 3), "disk", log=said.append, eval_view=eval_transform(12, 1.0))
    assert len(said) == 1 and len(list_cache()) == 4


def test_a_torn_cache_file_is_rebuilt_never_read(photos, cache):
    spec = StoreSpec("eval", 16, 1.0, 3)
    view = eval_transform(16, 1.0)
    good = build_store(photos, spec, "disk", log=_quiet, eval_view=view)
    want = good.gather(torch.arange(12)).clone()
    data = next(cache.glob("*.u8"))
    with open(data, "r+b") as f:  # killed while writing: half the bytes
        f.truncate(data.stat().st_size // 2)
    assert [e["state"] for e in list_cache()] == ["torn"]
    said = []
    again = build_store(photos, spec, "disk", log=said.append, eval_view=view)
    assert said == [] and torch.equal(again.gather(torch.arange(12)), want)
    assert [e["state"] for e in list_cache()] == ["ok"]
    # the record missing (killed between the data and its record): rebuilt as well
    next(cache.glob("*.json")).unlink()
    assert torch.equal(build_store(photos, spec, "disk", log=said.append, eval_view=view).gather(torch.arange(12)), want)
    assert said == []


def _build_in_child(paths, cache_root, out):
    os.environ["IMGCLS_CACHE"] = cache_root
    store = build_store(paths, StoreSpec("train", 16, 1.0, 3), "disk", log=lambda *a: None)
    np.save(out, store.gather(torch.arange(len(paths))).numpy())


@pytest.mark.slow
def test_two_processes_share_one_cache_without_corrupting_it(photos, cache, tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_in_child, args=(photos, str(cache), str(tmp_path / f"{k}.npy")))
             for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    a, b = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    assert np.array_equal(a, b)
    assert [e["state"] for e in list_cache()] == ["ok"] and not list(cache.glob("*.tmp-*"))
    direct = np.stack([eval_transform(19, 1.0)(load_image(p, channels=3)).numpy() for p in photos])
    assert np.array_equal(a, direct)


def test_cache_cli_lists_and_clears(photos, cache, capsys):
    build_store(photos, StoreSpec("eval", 16, 1.0, 3), "disk", log=_quiet, eval_view=eval_transform(16, 1.0))
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "1 entry" in out and "12 images" in out and "3x16x16" in out and out.rstrip().endswith("ok")
    assert main(["cache", "clear", "nosuchkey"]) == 2
    assert "imgcls cache list" in capsys.readouterr().err
    assert main(["cache", "clear"]) == 0
    assert "removed 1 cache entry" in capsys.readouterr().out and list_cache() == [] and cache_dir() == cache


# ---------------------------------------------------------------- batched augmentation

def test_a_box_crop_is_a_bilinear_resize_of_the_box_and_a_flip_is_a_flip():
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    boxes = np.array([[4, 6, 16, 16], [0, 0, 32, 32], [8, 2, 24, 20]], float)  # each downscaled to 16
    y = warp(x, torch.as_tensor(box_theta(boxes, 32, 32)), 16)
    for i, (left, top, w, h) in enumerate(boxes.astype(int)):
        ref = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=(16, 16), mode="bilinear",
                            align_corners=False)
        assert torch.allclose(y[i], ref[0], atol=1e-6)
    flipped = warp(x, torch.as_tensor(box_theta(np.array([[0, 0, 32, 32.]] * 3), 32, 32, np.array([True] * 3))), 32)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-6)


def test_the_crop_presets_cut_each_box_and_resize_it_with_torch_interpolate():
    """light/default: RandomResizedCrop's semantics, crop then resize, upscaled boxes included."""
    from imgcls.data.batchaug import _crop_boxes
    aug = BatchAugment(PLANS["light"], 24, seed=1)
    x = torch.rand(6, 3, 20, 20, dtype=torch.float64)
    index = np.arange(6)
    y = aug(x, torch.as_tensor(index), epoch=4)
    u = uniforms(1, 4, index, 48)
    for i, (left, top, w, h) in enumerate(np.rint(_crop_boxes(u, 20, 20, (0.5, 1.0))).astype(int)):
        ref = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=(24, 24), mode="bilinear",
                            align_corners=False)[0]
        if u[i, 40] < 0.5:
            ref = ref.flip(-1)
        assert torch.allclose(y[i], ref, atol=1e-12)


@pytest.mark.parametrize("preset", ["light", "default"])
def test_crops_of_uint8_pixels_equal_crops_of_float_within_one_grey_level(preset):
    """On the CPU the crop presets resize the uint8 pixels (before BatchPrep's float conversion): the
    same boxes and flips as the float path, values within the rounding of one grey level."""
    from imgcls.data.prep import BatchPrep
    aug = BatchAugment(PLANS[preset], 24, seed=5)
    images = torch.randint(0, 256, (8, 3, 30, 30), dtype=torch.uint8)
    index = torch.arange(8) * 3
    assert aug.takes_uint8(images) and not aug.takes_uint8(images.float())
    prep = BatchPrep("cpu", [0.0] * 3, [1.0] * 3, augment=aug, channels_last=True)
    prep.epoch = 2
    got = prep.images(images, index)
    want = aug(images.float() / 255, index, 2)
    assert got.shape == want.shape == (8, 3, 24, 24)
    assert (got - want).abs().max() <= 1.001 / 255   # one grey level, plus float32 rounding
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("preset", sorted(PLANS))
def test_batched_augmentation_equals_the_same_maps_image_by_image(preset):
    aug = BatchAugment(PLANS[preset], 16, seed=3)
    x = torch.rand(8, 3, 20, 20)
    index = torch.tensor([5, 0, 7, 2, 9, 11, 1, 4])
    batched = aug(x, index, epoch=2)
    one_by_one = torch.cat([aug(x[i:i + 1], index[i:i + 1], epoch=2) for i in range(8)])
    assert batched.shape == (8, 3, 16, 16)
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    # the draws depend on (seed, epoch, index) only: another batch order gives each image the same result
    perm = torch.randperm(8)
    assert torch.allclose(aug(x[perm], index[perm], epoch=2), batched[perm], atol=1e-5)
    if preset != "none":
        assert not torch.allclose(aug(x, index, epoch=3), batched, atol=1e-3)  # a new epoch, new draws


def test_the_random_crops_follow_the_preset_ranges():
    u = uniforms(0, 0, np.arange(4000), 48)
    assert 0.49 < u.mean() < 0.51 and u.min() >= 0 and u.max() < 1
    aug = BatchAugment(PLANS["light"], 16, seed=0)
    theta = aug.theta(np.arange(4000), 0, 64, 64)
    area = np.abs(theta[:, 0, 0] * theta[:, 1, 1])  # the box's share of the image
    assert area.min() >= 0.5 - 0.03 and area.max() <= 1.0 + 1e-9
    assert 0.45 < (theta[:, 0, 0] < 0).mean() < 0.55  # half of them flipped


# ---------------------------------------------------------------- through training

def _batches(cfg, n=3):
    from imgcls.engine.build import build_run
    run = build_run(cfg, log=_quiet)
    try:
        run.sampler.set_epoch(1)
        out = []
        for k, (images, targets, index) in enumerate(run.train_loader):
            if k == n:
                break
            run.prep.epoch = 1
            out.append((run.prep(images, targets, index)[0], index))
        val = [run.eval_prep.images(images) for images, _, _ in run.val_loader]
        return out, torch.cat(val)
    finally:
        run.lock.release()


def test_worker_counts_and_cache_settings_give_identical_batches(tiny_folder, tmp_path):
    base = {"data.augment": "light"}
    batched0, val_cached = _batches(small_config(tiny_folder, tmp_path / "a", **base, **{"data.num_workers": 0}))
    batched2, _ = _batches(small_config(tiny_folder, tmp_path / "b", **base, **{"data.num_workers": 2}))
    for (x0, i0), (x2, i2) in zip(batched0, batched2):
        assert torch.equal(i0, i2) and torch.equal(x0, x2)
    # the worker path over the cache, 0 and 2 workers, and without the cache: the tiny images all have
    # one size, so they are stored as they are and the batches are identical
    runs = [_batches(small_config(tiny_folder, tmp_path / f"w{k}{c}", **base,
                                  **{"data.num_workers": k, "data.augment_on": "workers", "data.cache": c}))
            for k, c in ((0, "memory"), (2, "memory"), (2, "none"))]
    for other in runs[1:]:
        for (x0, i0), (x2, i2) in zip(runs[0][0], other[0]):
            assert torch.equal(i0, i2) and torch.equal(x0, x2)
        assert torch.equal(other[1], runs[0][1])
    assert torch.equal(val_cached, runs[2][1])  # cached validation equals decoding every epoch


@pytest.mark.slow
def test_ema_matches_averaged_model_and_validates_the_averaged_weights(tiny_folder, tmp_path):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from imgcls.engine.build import build_run
    from imgcls.engine.fit import fit
    from imgcls.models.modelinfo import load_weights
    cfg = small_config(tiny_folder, tmp_path / "ema", **{"train.ema": 0.9, "train.epochs": 2})
    run = build_run(cfg, log=_quiet)
    oracle = AveragedModel(run.model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    original = run.ema.update_parameters

    def both(model):
        original(model)
        oracle.update_parameters(model)
    run.ema.update_parameters = both
    try:
        fit(run)
    finally:
        run.lock.release()
    mine, ref = run.ema.module.state_dict(), oracle.module.state_dict()
    assert all(torch.equal(mine[k], ref[k]) for k in ref)
    assert int(run.ema.n_averaged) == len(run.step_config.batch_sizes) * 2 // run.step_config.accumulate
    saved = load_weights(run.run_dir / "best.safetensors")
    ema_w, live_w = run.ema.module.state_dict(), run.model.state_dict()
    key = next(k for k in saved if saved[k].is_floating_point() and not torch.equal(ema_w[k], live_w[k]))
    best_epoch = json.loads((run.run_dir / "val_metrics.json").read_text())["epoch"]
    if best_epoch == 2:  # best.safetensors holds the averaged weights, not the live ones
        assert torch.equal(saved[key], ema_w[key])


def test_ema_survives_resume_bit_exactly(tiny_folder, tmp_path):
    cfg = small_config(tiny_folder, tmp_path / "full", **{"train.ema": 0.8, "train.epochs": 3})
    imgcls.train(cfg, log=_quiet)
    part = small_config(tiny_folder, tmp_path / "part", **{"train.ema": 0.8, "train.epochs": 3})
    imgcls.train(part, log=_quiet, on_epoch=lambda epoch, row: epoch == 1)
    imgcls.resume(tmp_path / "part", log=_quiet)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert a["ema"] is not None and set(a["ema"]) == set(b["ema"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert (tmp_path / "full" / "best.safetensors").read_bytes() == (tmp_path / "part" / "best.safetensors").read_bytes()


def test_bad_fast_path_settings_are_one_sentence(tiny_folder, tmp_path, capsys):
    for words, msg in ((["train.ema=1.5"], "train.ema"),
                       (["data.cache=none", "data.augment_on=device"], "data.cache is none"),
                       (["data.augment=strong", "data.augment_on=device"], "has no batched form"),
                       (["data.cache=sometimes"], "data.cache")):
        rc = main(["train", f"data.root={tiny_folder}", "model.name=small_cnn", "data.image_size=16",
                   "train.epochs=1", f"run.dir={tmp_path / 'x'}", *words])
        assert rc == 2 and msg in capsys.readouterr().err, words
        assert not (tmp_path / "x").exists()


def test_a_failing_compile_warns_and_trains_eagerly(tiny_folder, tmp_path, monkeypatch):
    def broken(model, *a, **k):
        raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken)
    said = []
    res = imgcls.train(small_config(tiny_folder, tmp_path / "c", **{"train.compile": True, "train.epochs": 1}),
                       log=said.append)
    assert any("train.compile failed (RuntimeError: no C++ compiler found); training in eager mode" in s
               for s in said)
    assert (res.run_dir / "best.safetensors").is_file()


# ---------------------------------------------------------------- reused CPU buffers (data/buffers.py)

def test_buffer_pool_reuses_a_free_buffer_and_never_one_that_is_held():
    from imgcls.data.buffers import BufferPool
    pool, shape = BufferPool(), (4, 3, 256, 256)          # 3 MiB of float32: pooled
    a = pool.empty(shape, torch.float32)
    b = pool.empty(shape, torch.float32)
    assert b.data_ptr() != a.data_ptr()                     # a is held by this name
    a_ptr = a.data_ptr()
    del a
    assert pool.empty(shape, torch.float32).data_ptr() == a_ptr   # free again: the same memory
    for holder in (lambda t: t[1:], lambda t: t.numpy(), lambda t: torch.utils.dlpack.to_dlpack(t)):
        c = pool.empty(shape, torch.float32)
        kept = holder(c)                                   # a view, a numpy array, a DLPack capsule
        c_ptr = c.data_ptr()
        del c
        assert pool.empty(shape, torch.float32).data_ptr() != c_ptr
        del kept
    d = pool.empty(shape, torch.float32).requires_grad_()  # made a leaf of autograd, then dropped
    d_ptr = d.data_ptr()
    del d
    assert pool.empty(shape, torch.float32).data_ptr() != d_ptr
    small = pool.empty((2, 3), torch.float32)              # below the threshold: plain torch.empty
    assert pool.empty((2, 3), torch.float32).data_ptr() != small.data_ptr()


def test_buffer_pool_skips_a_batch_saved_by_autograd():
    from imgcls.data.buffers import BufferPool
    pool, shape = BufferPool(), (2, 3, 256, 256)
    x = pool.empty(shape, torch.float32).fill_(1.0)
    w = torch.ones(4, 3, 3, 3, requires_grad=True)
    out = F.conv2d(x, w)                                     # the graph saves x for w's gradient
    x_ptr = x.data_ptr()
    del x
    y = pool.empty(shape, torch.float32).fill_(2.0)
    assert y.data_ptr() != x_ptr
    out.sum().backward()
    assert torch.equal(w.grad, torch.full_like(w, 2 * 254 * 254))   # the saved ones, not the 2s


def test_batches_kept_by_the_caller_stay_intact():
    """BatchPrep and the cached loader reuse their CPU buffers, but a batch the caller keeps is never
    overwritten: every kept batch equals the same batch made afresh."""
    from imgcls.data.dataset import CachedLoader, EpochBatchSampler
    from imgcls.data.prep import BatchPrep
    from imgcls.data.store import ImageStore
    pixels = torch.randint(0, 256, (48, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    store = ImageStore(pixels, "memory")
    sampler = EpochBatchSampler(48, 16, 0, True)
    loader = CachedLoader(store, torch.zeros(48, dtype=torch.long), sampler)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    prep = BatchPrep("cpu", mean, std, channels_last=True, augment=BatchAugment(PLANS["default"], 56, seed=3))
    kept = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        prep.epoch = epoch
        for images, _, index in loader:
            kept.append((epoch, index.clone(), prep.images(images, index)))
    assert len({x.data_ptr() for _, _, x in kept}) == len(kept)
    fresh = BatchPrep("cpu", mean, std, channels_last=True, augment=BatchAugment(PLANS["default"], 56, seed=3))
    for epoch, index, x in kept:
        fresh.epoch = epoch
        want = fresh.images(pixels[index].permute(0, 3, 1, 2).contiguous(), index)
        assert torch.equal(x, want)


@pytest.mark.parametrize("channels_last", [True, False])
def test_normalisation_equals_the_formula_in_either_layout(channels_last):
    from imgcls.data.prep import BatchPrep
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8)
    got = BatchPrep("cpu", mean, std, channels_last=channels_last).images(images)
    want = (images.double() / 255 - torch.tensor(mean, dtype=torch.double).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.double).view(1, 3, 1, 1)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert (got.double() - want).abs().max() < 1e-6
