"""Augmentation presets (torchvision.transforms.v2) on uint8 [C,H,W] tensors.

Workers only crop, flip and colour-jitter uint8 images; conversion to float and
normalisation happen once per batch on the training device (see ``normalize``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.transforms import v2

from ..errors import unknown_name
from ..registry import reject_unknown

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    allows_flip: bool   # False: a mirrored image is another class (digits, text); TTA must not flip
    build: Callable[..., list]  # (image_size, channels, **params) -> list of v2 transforms
    params: tuple[str, ...] = ()  # keyword parameters of `build` (data.<param>); no preset takes any yet


INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
                  "nearest": v2.InterpolationMode.NEAREST}


def _resize_crop(size: int, crop_pct: float = 1.0, interpolation: str = "bilinear") -> list:
    return [v2.Resize(int(round(size / crop_pct)), interpolation=INTERPOLATIONS[interpolation], antialias=True),
            v2.CenterCrop(size)]


def _none(size: int, channels: int) -> list:
    return _resize_crop(size)


def _digits(size: int, channels: int) -> list:
    # Small shifts, rotations and zooms; never mirror (a flipped 2 is not a 2).
    return _resize_crop(size) + [v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))]


def _default(size: int, channels: int) -> list:
    return [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip()]


def _light(size: int, channels: int) -> list:
    # For small datasets where a 0.08 area crop throws away the object.
    return [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()]


def _strong(size: int, channels: int) -> list:
    ops = _default(size, channels) + [v2.RandAugment(num_ops=2, magnitude=9)]
    if channels == 3:  # saturation and hue need colour
        ops.append(v2.ColorJitter(0.3, 0.3, 0.3, 0.05))
    else:
        ops.append(v2.ColorJitter(0.3, 0.3))
    return ops


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("none", "resize and centre crop only", True, _none),
    Preset("digits", "small affine jitter, no flips (digits, text)", False, _digits),
    Preset("light", "random resized crop (50-100% area) + horizontal flip", True, _light),
    Preset("default", "random resized crop (8-100% area) + horizontal flip (photos)", True, _default),
    Preset("strong", "default + RandAugment(2, 9) + colour jitter", True, _strong),
)}


def list_augments() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise unknown_name("augment preset", name, list_augments())
    return PRESETS[name]


def train_transform(preset: str, image_size: int, channels: int, **params) -> v2.Compose:
    p = get_preset(preset)
    reject_unknown("augment preset", preset, p.params, params, "data")
    return v2.Compose(p.build(image_size, channels, **params))


def eval_transform(image_size: int, crop_pct: float = 1.0, interpolation: str = "bilinear") -> v2.Compose:
    """Resize the short side to image_size / crop_pct with ``interpolation`` (antialiased), then centre crop
    image_size (timm's convention)."""
    return v2.Compose(_resize_crop(image_size, crop_pct, interpolation))


def store_resize(side: int) -> v2.Compose:
    """The decoded cache's training images: short side to ``side``, centre crop ``side`` x ``side``."""
    return v2.Compose(_resize_crop(side))


def default_mean_std(channels: int) -> tuple[list[float], list[float]]:
    if channels == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [0.5] * channels, [0.5] * channels


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [N,C,H,W] (any device) -> float32 normalised; done once per batch on the device.

    ``mean``/``std`` are sequences, or float32 tensors already on the device (no copy per batch).
    """
    m = torch.as_tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() / 255.0 - m) / s
