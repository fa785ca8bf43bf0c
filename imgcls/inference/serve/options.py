"""What ``imgcls serve`` is told: batching, limits and timeouts, checked once before the model is loaded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...errors import UserError
from ...tasks import TOP_K

BACKENDS = ("torch", "onnx")
TOKEN_ENV = "IMGCLS_SERVE_TOKEN"  # when set, every endpoint but /health and /ready wants 'Bearer <token>'


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    max_batch_size: int = 32            # images per forward pass
    batch_timeout_ms: float = 5.0       # how long the first image of a batch waits for more (ms)
    tta: bool = False                   # also average over horizontal flips, as predict --tta
    max_body_mb: float = 20.0           # a request body over this (MiB) is refused (413) unread
    max_pixels: Optional[int] = None    # width x height; None: the model's own limit, as predict uses
    timeout_s: float = 30.0             # a request not answered by then gets 503; also the shutdown grace
    max_queue: int = 256                # images waiting for a batch; past it, 503 with Retry-After
    top_k: int = TOP_K                  # default class names in top_k (the request's ?top_k= overrides it)
    decode_threads: int = 4             # threads decoding and resizing uploads before they are batched
    token: Optional[str] = None         # None: read IMGCLS_SERVE_TOKEN when the app is made
    backend: str = "torch"              # torch, or onnx: the run's model.onnx through onnxruntime (CPU)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def check(self) -> None:
        """One sentence per bad value, naming the flag."""
        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}.")
        whole = {"--max-batch-size": self.max_batch_size, "--max-queue": self.max_queue, "--top-k": self.top_k,
                 "--decode-threads": self.decode_threads}
        for flag, v in whole.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{flag} must be a whole number of at least 1, got {v!r}.")
        positive = {"--batch-timeout-ms": (self.batch_timeout_ms, 0), "--max-body-mb": (self.max_body_mb, 1e-9),
                    "--timeout-s": (self.timeout_s, 1e-9)}
        for flag, (v, low) in positive.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < low:
                raise UserError(f"{flag} must be a positive number{' or 0' if low == 0 else ''}, got {v!r}.")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int)
                                            or self.max_pixels < 1):
            raise UserError(f"--max-pixels must be a positive pixel count (width x height), got {self.max_pixels!r}.")
