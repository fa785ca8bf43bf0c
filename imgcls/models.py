"""Models by name: any timm model, plus ``small_cnn`` for tiny (e.g. 28x28) images.

Weights are never downloaded: ``pretrained`` is False or a path to a local file, which timm
loads with its own head and input-channel adaptation (``pretrained_cfg_overlay=dict(file=...)``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import timm
import torch
from timm.models import register_model
from torch import nn

from .errors import UserError, unknown_name


class SmallCNN(nn.Module):
    """Four conv blocks (32-64-64-128 channels, pooling after the 1st and 3rd) with batch norm,
    global average pooling and a linear head: 0.13M parameters, ~15 MFLOP per 28x28 image.

    Full-resolution layers are kept thin on purpose: a 32->32 conv at 28x28 made a CPU step
    12x slower for no accuracy gain on MNIST-5k.
    Works at any input size thanks to the global pooling.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0, **kwargs):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_chans, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.num_classes = num_classes
        self.num_features = 128
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(128, num_classes)
        self.pretrained_cfg = {"first_conv": "features.0", "classifier": "fc", "num_classes": num_classes}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """timm entry point, so ``timm.create_model('small_cnn')`` and ``list_models`` know it.

    With ``pretrained=True`` and ``pretrained_cfg_overlay=dict(file=...)`` it loads that local file
    through timm's ``load_pretrained``: a head of another size is dropped, the first conv adapted.
    """
    from timm.models import load_pretrained
    from timm.models._pretrained import PretrainedCfg

    kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    model = SmallCNN(**kwargs)
    if pretrained:
        state = timm.models.load_state_dict(overlay["file"])
        head = state.get("fc.weight")
        cfg = PretrainedCfg(state_dict=state, first_conv="features.0", classifier="fc",
                            num_classes=-1 if head is None else head.shape[0]).to_dict()
        cfg["state_dict"] = state
        load_pretrained(model, cfg, num_classes=model.num_classes, in_chans=kwargs.get("in_chans", 3),
                        strict=False)
    return model


def list_models(pattern: str = "") -> list[str]:
    """Every timm architecture name (pretrained tags are irrelevant: weights come from local files)."""
    return timm.list_models(f"*{pattern}*" if pattern else "")


def create_model(name: str, num_classes: int, in_chans: int = 3,
                 pretrained: Union[bool, str, Path] = False, drop_rate: float = 0.0) -> nn.Module:
    """Build ``name`` with a ``num_classes`` head for ``in_chans`` input channels.

    ``pretrained`` is False or a local weights file (.safetensors, .pth, .bin); the classifier
    head is re-initialised when its size differs, and the first conv adapted to ``in_chans``.
    """
    if not timm.is_model(name):
        raise unknown_name("model", name, list_models())
    if pretrained is True:
        raise UserError("model.pretrained is true, but weights are never downloaded; set it to the path "
                        "of a local weights file (.safetensors, .pth or .bin).")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if pretrained:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise UserError(f"model.pretrained file '{path}' does not exist; pass the path of a local "
                            "weights file (.safetensors, .pth or .bin).")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never reach for a hub
        try:
            return timm.create_model(name, pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f"model.pretrained file '{path}' does not fit model '{name}' "
                            f"({str(e).splitlines()[0][:200]}); pass weights saved from that architecture.")
    return timm.create_model(name, pretrained=False, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
