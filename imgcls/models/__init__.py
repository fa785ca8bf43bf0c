"""Models by name: any timm model, plus ``small_cnn`` and ``digits_cnn`` for tiny (e.g. 28x28) images.

Weights are never downloaded: ``pretrained`` is False or a path to a local file, which timm
loads with its own head and input-channel adaptation (``pretrained_cfg_overlay=dict(file=...)``).
"""
from __future__ import annotations

from .factory import create_model, fixed_input_size, list_models
from .weights import load_pretrained_file

__all__ = ["create_model", "fixed_input_size", "list_models", "load_pretrained_file"]
