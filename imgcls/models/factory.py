"""Models by name: timm's factory, with imgcls's checks and local weights files."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import timm
from torch import nn

from ..errors import unknown_name
from . import cnn  # noqa: F401  (registers small_cnn and digits_cnn with timm's registry)
from .weights import load_pretrained_file


def list_models(pattern: str = "") -> list[str]:
    """Every timm architecture name (pretrained tags: ``timm.list_pretrained``)."""
    return timm.list_models(f"*{pattern}*" if pattern else "")


def _cfg_value(name: str, key: str, default=None):
    from timm.models import get_pretrained_cfg_value
    try:
        value = get_pretrained_cfg_value(name, key)
    except RuntimeError:  # no pretrained cfg registered (small_cnn)
        return default
    return default if value is None else value


def fixed_input_size(name: str) -> bool:
    """True for timm models built for one input size (ViT-style position embeddings)."""
    return bool(_cfg_value(name, "fixed_input_size", False))


def create_model(name: str, num_classes: int, in_chans: int = 3,
                 pretrained: Union[bool, str, Path] = False, drop_rate: float = 0.0,
                 image_size: Optional[int] = None, log: Optional[Callable[[str], None]] = None) -> nn.Module:
    """Build ``name`` with a ``num_classes`` head for ``in_chans`` input channels.

    ``image_size`` is passed to models built for one input size (``img_size=``), so a ViT works at
    the configured size. ``pretrained`` is False, True (the name's hub weights: ``imgcls.models.hub``),
    a local weights file (.safetensors, .pth, .bin) or a timm folder; ``name`` may also be
    ``hf-hub:ORG/REPO[@REV]`` or ``local-dir:PATH``. Weights load strictly except for the classifier
    head (re-initialised when its size differs) and the first convolution (adapted to ``in_chans``);
    see ``load_pretrained_file``.
    """
    by_path = name.startswith(("hf-hub:", "local-dir:"))
    if not by_path and not timm.is_model(name):
        raise unknown_name("model", name, list_models())
    if pretrained is True or by_path or (pretrained and Path(pretrained).expanduser().is_dir()):
        from .hub import resolve_weights
        source = resolve_weights(name, pretrained)
        name, pretrained = source.architecture, (Path(source.file) if source.file else False)
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
    if image_size is not None and fixed_input_size(name):
        kwargs["img_size"] = image_size
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained:
        load_pretrained_file(model, Path(pretrained).expanduser(), name, log)
    return model

