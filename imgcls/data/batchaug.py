"""Augmentation of whole batches on the training device, for images from the decoded store.

Every preset with a batched form is one affine map per sample (a crop box, a flip, the digits
jitter's rotation, shift and zoom), applied to the batch with PyTorch's own ``affine_grid`` +
``grid_sample`` (bilinear): one well-tested kernel that runs on any device, rather than a warp of our
own, and a crop of a box is exactly a bilinear resize of that box (the tests check it against
``torch.nn.functional.interpolate``). uint8 images come in, are converted to float once, warped, and
normalised afterwards by ``BatchPrep``.

Per-sample parameters come from (seed, epoch, index) alone, through a counter-based hash
(SplitMix64), computed for the whole batch at once: results do not depend on batch composition,
worker or process counts, and a resumed run draws exactly what an uninterrupted one would.
Presets without a batched form (``strong``: RandAugment) use the worker path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .buffers import BufferPool

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, index: np.ndarray, k: int) -> np.ndarray:
    """[N, k] uniform numbers in [0, 1), a function of (seed, epoch, index[i], column) only."""
    base = _splitmix(_splitmix(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)) ^ np.uint64(epoch + 1))
    idx = np.asarray(index, dtype=np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        x = _splitmix(base ^ _splitmix(idx * np.uint64(0x632BE59BD9B4E019) + np.arange(k, dtype=np.uint64)))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class BatchPlan:
    """The batched form of a preset."""
    name: str
    crop_scale: Optional[tuple[float, float]] = None   # random resized crop: area fraction range
    flip: bool = False
    degrees: float = 0.0                              # digits: rotation, shift (fraction of size), zoom
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)

    @property
    def jitter(self) -> bool:
        """Whether the plan has the digits affine jitter (else it is crops and flips only)."""
        return bool(self.degrees or self.translate or self.scale != (1.0, 1.0))


PLANS = {
    "none": BatchPlan("none"),
    "digits": BatchPlan("digits", degrees=10.0, translate=0.1, scale=(0.9, 1.1)),
    "light": BatchPlan("light", crop_scale=(0.5, 1.0), flip=True),
    "default": BatchPlan("default", crop_scale=(0.08, 1.0), flip=True),
}


def batch_plan(preset: str) -> Optional[BatchPlan]:
    """The preset's batched form, or None (it runs in workers)."""
    return PLANS.get(preset)


def _centre_box(h: int, w: int) -> tuple[float, float, float, float]:
    """(left, top, width, height) of the centred square of side min(h, w): resize + centre crop."""
    s = min(h, w)
    return (w - s) / 2, (h - s) / 2, s, s


def _crop_boxes(u: np.ndarray, h: int, w: int, scale: tuple[float, float]) -> np.ndarray:
    """RandomResizedCrop's boxes (ratio 3/4..4/3, 10 tries, else the centred largest box)
    -> [N, 4] (left, top, width, height) in pixels."""
    n, area = len(u), h * w
    boxes = np.zeros((n, 4))
    done = np.zeros(n, bool)
    log_r = (math.log(3 / 4), math.log(4 / 3))
    for t in range(10):
        a = area * (scale[0] + (scale[1] - scale[0]) * u[:, 4 * t])
        r = np.exp(log_r[0] + (log_r[1] - log_r[0]) * u[:, 4 * t + 1])
        cw, ch = np.round(np.sqrt(a * r)), np.round(np.sqrt(a / r))
        ok = ~done & (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
        left = np.floor(u[:, 4 * t + 2] * (w - cw + 1))
        top = np.floor(u[:, 4 * t + 3] * (h - ch + 1))
        boxes[ok] = np.stack([left, top, cw, ch], 1)[ok]
        done |= ok
    if not done.all():  # torchvision's fallback: the whole image, ratio clamped to the range
        ratio = w / h
        cw, ch = (w, round(w / (4 / 3))) if ratio > 4 / 3 else (round(h * 3 / 4), h) if ratio < 3 / 4 else (w, h)
        boxes[~done] = [(w - cw) / 2, (h - ch) / 2, cw, ch]
    return boxes


def box_theta(boxes: np.ndarray, h: int, w: int, flip: Optional[np.ndarray] = None) -> np.ndarray:
    """[N, 2, 3] affine_grid matrices that sample the pixel boxes (left, top, width, height) of an
    [H, W] image onto the output (align_corners=False), mirrored where ``flip``."""
    left, top, bw, bh = boxes.T
    theta = np.zeros((len(boxes), 2, 3))
    sx = bw / w
    theta[:, 0, 0] = np.where(flip, -sx, sx) if flip is not None else sx
    theta[:, 0, 2] = (2 * left + bw) / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, size: int, padding: str = "border") -> torch.Tensor:
    """float [N, C, H, W] -> [N, C, size, size] through per-sample affine maps (bilinear)."""
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class BatchAugment:
    """``(images [N, C, H, W] on the device, dataset indices [N], epoch) -> [N, C, size, size]``: float
    images in 0..1, or (``takes_uint8``: the crop presets on the CPU) the uint8 pixels."""

    def __init__(self, plan: BatchPlan, size: int, seed: int):
        self.plan, self.size, self.seed = plan, size, seed
        self.pool = BufferPool()   # the CPU crops' output batch, reused (data/buffers.py)

    def theta(self, index: np.ndarray, epoch: int, h: int, w: int) -> np.ndarray:
        p, n = self.plan, len(index)
        u = uniforms(self.seed, epoch, index, 48)
        if p.crop_scale is not None:
            boxes = _crop_boxes(u, h, w, p.crop_scale)
        else:
            boxes = np.tile(_centre_box(h, w), (n, 1))
        flip = (u[:, 40] < 0.5) if p.flip else None
        theta = box_theta(boxes, h, w, flip)
        if p.jitter:
            theta = _jitter(theta, u[:, 41:45], p)
        return theta

    def __call__(self, x: torch.Tensor, index, epoch: int) -> torch.Tensor:
        index = index.cpu().numpy() if torch.is_tensor(index) else np.asarray(index)
        if not self.plan.jitter:
            return self._crops(x, index, epoch)
        theta = torch.as_tensor(self.theta(index, epoch, x.shape[-2], x.shape[-1]), device=x.device)
        padding = "zeros" if self.plan.degrees or self.plan.translate else "border"  # RandomAffine fills 0
        return warp(x, theta, self.size, padding)


    def takes_uint8(self, x: torch.Tensor) -> bool:
        """Whether this plan runs on the uint8 pixels themselves, before the float conversion: the crop
        presets on the CPU, where torch's uint8 bilinear kernel resizes 64 crops to 224 px in 13 ms
        against 37 ms in float32 (the values differ by at most one grey level, the rounding), and the
        conversion then touches only the output size. Elsewhere (CUDA) the float path."""
        return x.dtype == torch.uint8 and x.device.type == "cpu" and not self.plan.jitter

    def _crops(self, x: torch.Tensor, index: np.ndarray, epoch: int) -> torch.Tensor:
        """The crop-and-flip presets: each sample's box cut out and resized with ``F.interpolate``
        (bilinear, align_corners=False), then mirrored where drawn: RandomResizedCrop's own semantics
        (crop, then resize), and on the CPU 2-5x cheaper than ``grid_sample`` over the batch (64 images
        at 224 px: 22-47 ms against 108 ms, bench/bench_pipeline.py). The same boxes and flips as
        ``theta`` describes; they equal ``warp`` of it wherever the box is not upscaled."""
        p, (h, w) = self.plan, x.shape[-2:]
        u = uniforms(self.seed, epoch, index, 48)
        boxes = (_crop_boxes(u, h, w, p.crop_scale) if p.crop_scale is not None
                 else np.tile(_centre_box(h, w), (len(index), 1)))
        # uint8 on the CPU: each crop laid out channels_last, where torch's uint8 bilinear kernel is
        # fastest (cheaper than converting the whole stored batch first: 18 ms against 39 ms per 64);
        # the store's batches are channels_last already, so their crops need no copy
        nhwc = x.dtype == torch.uint8 and x.device.type == "cpu"
        keep_nhwc = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if nhwc or keep_nhwc else torch.contiguous_format
        shape = (len(x), x.shape[1], self.size, self.size)
        out = (self.pool.empty(shape, x.dtype, fmt) if x.device.type == "cpu"
               else torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt))
        flip = (u[:, 40] < 0.5) if p.flip else np.zeros(len(x), bool)
        for i, (left, top, bw, bh) in enumerate(np.rint(boxes).astype(np.int64)):
            crop = x[i:i + 1, :, top:top + bh, left:left + bw]
            if nhwc and not keep_nhwc:
                crop = crop.contiguous(memory_format=torch.channels_last)
            if bh != self.size or bw != self.size:
                crop = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", align_corners=False)
            out[i] = crop[0].flip(-1) if flip[i] else crop[0]   # mirrored as it is written: one copy
        return out


def _jitter(theta: np.ndarray, u: np.ndarray, p: BatchPlan) -> np.ndarray:
    """Compose the digits jitter (rotation, shift, zoom about the centre, on the output square) in front
    of the resize map: output coords -> jittered coords -> input."""
    angle = np.deg2rad(-p.degrees + 2 * p.degrees * u[:, 0])
    zoom = p.scale[0] + (p.scale[1] - p.scale[0]) * u[:, 1]
    # shifts up to ``translate`` of the side, in normalised units (2 spans the image)
    tx, ty = (-p.translate + 2 * p.translate * u[:, 2]) * 2, (-p.translate + 2 * p.translate * u[:, 3]) * 2
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    inv = np.zeros((len(u), 3, 3))  # the inverse of: zoom, rotate, then shift
    inv[:, 0, 0], inv[:, 0, 1] = cos, sin
    inv[:, 1, 0], inv[:, 1, 1] = -sin, cos
    inv[:, 0, 2] = -(cos * tx + sin * ty)
    inv[:, 1, 2] = -(-sin * tx + cos * ty)
    inv[:, 2, 2] = 1
    full = np.concatenate([theta, np.tile([[[0, 0, 1.0]]], (len(theta), 1, 1))], 1)
    return (full @ inv)[:, :2]
