"""Batch preparation on the device: what turns a loader batch into model input.

Workers yield uint8 images; here, once per batch on the training/inference device, they become
float32, normalised with mean/std (held on the device, so no host copy per batch), optionally
mixed (MixUp/CutMix, training only) and laid out channels_last. Validation, predict, evaluate,
export's parity check and the report's gallery all go through ``BatchPrep.images``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


class BatchPrep:
    """uint8 [N,C,H,W] (+ targets) -> model input on ``device``; ``mix`` applies in training only."""

    def __init__(self, device: torch.device | str, mean: Sequence[float], std: Sequence[float],
                 mix: Optional[Callable] = None, channels_last: bool = False):
        self.device = torch.device(device)
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(list(std), dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.mix = mix
        self.channels_last = channels_last

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> normalised float32 on the device: (pixel / 255 - mean) / std."""
        x = images.to(self.device, non_blocking=True)
        x = (x.float() / 255.0 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: images as in ``images``, targets on the device, then MixUp/CutMix
        (the targets become class probabilities)."""
        x = self.images(images)
        y = targets.to(self.device, non_blocking=True)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y
