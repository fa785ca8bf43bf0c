"""``imgcls serve``: a trained run (or a cv folder, or an ensemble) behind an HTTP API, with predict's
preprocessing and fields, a micro-batcher, limits against hostile uploads and Prometheus metrics.

``create_app`` returns the ASGI app (FastAPI) for mounting or middleware; ``serve`` runs it with uvicorn.
Both need the ``serve`` extra (``pip install 'imgcls[serve]'``); importing this package does not.
"""
from __future__ import annotations

from .options import TOKEN_ENV, ServeOptions
from .run import create_app, serve

__all__ = ["ServeOptions", "TOKEN_ENV", "create_app", "serve"]
