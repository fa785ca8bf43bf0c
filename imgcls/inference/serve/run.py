"""Making and running the app: the extra's imports checked once, uvicorn with a graceful shutdown."""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Sequence

from ...errors import UserError
from .options import ServeOptions


def require_extra() -> None:
    """The serve extra's packages, or one sentence saying how to get them."""
    import importlib
    for module, package in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart"),
                            ("prometheus_client", "prometheus-client")):
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"imgcls serve needs {package}, which is not installed; "
                            "pip install 'imgcls[serve]'.") from None


def create_app(model: Any, options: ServeOptions = ServeOptions(), *, ensemble: Sequence[str | os.PathLike] = (),
               device: str = "auto") -> Any:
    """The ASGI app (FastAPI) serving ``model``: a run folder, a cv folder (its fold ensemble) or a Predictor
    from ``imgcls.load``, plus ``ensemble`` runs averaged in as predict --ensemble does. Mount it, add
    middleware, or run it with uvicorn."""
    require_extra()
    from .app import make_app
    return make_app(model, options, ensemble=ensemble, device=device)


def serve(models: Sequence[str | os.PathLike], options: ServeOptions = ServeOptions(), host: str = "127.0.0.1",
          port: int = 8000, device: str = "auto") -> int:
    """``imgcls serve``: load, print one line, answer until SIGTERM or Ctrl-C, finish in-flight requests
    (up to ``options.timeout_s``), return 0."""
    if not models:
        raise UserError("imgcls serve needs a MODEL: a run folder, a cv folder or several runs (an ensemble).")
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0-65535, got {port}.")
    options.check()
    require_extra()
    import uvicorn
    app = create_app(models[0], options, ensemble=models[1:], device=device)
    service = app.app.state.service
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=max(1, int(round(options.timeout_s))))
    server = uvicorn.Server(config)
    about = service.metadata()
    names = " + ".join(m["run"] for m in about["models"])
    print(f"imgcls serve: http://{host}:{port} model {names} ({about['task']}, {len(about['classes'])} classes, "
          f"{about['image_size']} px) on {about['device']}, batches of up to {options.max_batch_size} within "
          f"{options.batch_timeout_ms:g} ms{', tta' if options.tta else ''}"
          f"{', token required' if service_token_set(app) else ''}", file=sys.stderr, flush=True)
    # uvicorn re-raises the signal that stopped it once it is done; a quiet handler makes that a plain exit 0
    saved = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
    if not server.started:
        raise UserError(f"could not listen on {host}:{port} (in use, or not an address of this machine); "
                        "choose another --port or --host.")
    return 0


def service_token_set(app: Any) -> bool:
    return app.expected is not None
