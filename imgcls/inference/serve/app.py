"""The HTTP layer of ``imgcls serve`` (FastAPI): read a bounded body, decode it in a thread pool through the
predictor's own preprocessing, queue the images for the micro-batcher, answer with predict's CSV fields.

Every refusal is JSON ``{"error": "..."}`` with a 4xx/503 status; the token and image bytes are never logged.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import ClientDisconnect

from ...data.decode import BadImageError, ImageLimits
from ...io import file_sha256
from ..predictor import Predictor, prediction_cells, prediction_header
from .batcher import MicroBatcher, QueueFull
from .onnx import onnx_probabilities, onnx_session
from .options import TOKEN_ENV, ServeOptions
from .page import PAGE

OPEN_PATHS = ("/health", "/ready")  # answered without the token: a load balancer's probes
CLIENT_GONE = 499  # nginx's 'client closed request': counted in the metrics; nobody is left to read it
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeError(Exception):
    """A refusal the client hears as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---------------------------------------------------------------- metrics

class Metrics:
    """Prometheus metrics in the app's own registry (two apps in one process do not collide)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("imgcls_serve_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("imgcls_serve_request_seconds", "POST /predict latency (s)", registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("imgcls_serve_batch_size", "images per forward pass", registry=self.registry,
                               buckets=BATCH_BUCKETS)
        self.forward = Histogram("imgcls_serve_forward_seconds", "one forward pass of a batch (s)",
                                 registry=self.registry, buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                                                  .5, 1, 2.5, 5, 10))
        self.queue = Gauge("imgcls_serve_queue_depth", "images waiting for a batch", registry=self.registry)
        self.in_flight = Gauge("imgcls_serve_in_flight", "POST /predict requests being answered", registry=self.registry)
        self.images = Counter("imgcls_serve_images", "images predicted", registry=self.registry)
        self.cancelled = Counter("imgcls_serve_cancelled", "images dropped unforwarded: their client disconnected "
                                 "or their request timed out", registry=self.registry)
        self.disconnected = Counter("imgcls_serve_disconnected", "POST /predict requests whose client disconnected "
                                    "before the answer", registry=self.registry)


# ---------------------------------------------------------------- the guard: token, body size, metrics

async def send_json(send, status: int, obj: Any, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: Bearer token (constant-time), Content-Length over the limit refused before the body
    is read, and every request counted by endpoint and status."""

    def __init__(self, app, token: Optional[str], max_body: int, metrics: Metrics, endpoints: Sequence[str]):
        self.app, self.max_body, self.metrics, self.endpoints = app, max_body, metrics, set(endpoints)
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        status = [500]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        gauge = self.metrics.in_flight if endpoint == "/predict" else None
        if gauge is not None:
            gauge.inc()
        try:
            refusal = self.refusal(scope)
            if refusal:
                await send_json(counted_send, refusal[0], {"error": refusal[1]}, refusal[2])
            else:
                await self.app(scope, receive, counted_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            if gauge is not None:
                gauge.dec()

    def refusal(self, scope) -> Optional[tuple[int, str, list]]:
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return 401, ("this server wants 'Authorization: Bearer <token>' (the IMGCLS_SERVE_TOKEN it was "
                             "started with)"), [(b"www-authenticate", b"Bearer")]
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return 400, "the Content-Length header is not a number", []
            if n > self.max_body:
                return 413, body_too_large(self.max_body), [(b"connection", b"close")]
        return None


def body_too_large(limit: int) -> str:
    return (f"the request body is over the limit of {limit / 2**20:g} MiB (--max-body-mb); send fewer or "
            "smaller images per request")


# ---------------------------------------------------------------- request bodies -> named image bytes

async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` bytes (a chunked upload has no Content-Length)."""
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ServeError(413, body_too_large(limit), {"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnected(request: Request) -> None:
    """Returns once the client has gone. After the body is read, an ASGI server's receive() blocks until the
    connection closes and then says 'http.disconnect' (so this waits without polling)."""
    try:
        while (await request.receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a server whose receive() fails here cannot tell us: then never abandon the request
        await asyncio.get_running_loop().create_future()


async def images_in(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) per image: multipart ``file`` fields, a JSON ``{"images": [base64, ...]}`` or a raw body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await multipart_images(request, body)
    if kind == "application/json":
        return json_images(body)
    if kind.startswith("image/") or kind == "application/octet-stream":
        if not body:
            raise ServeError(400, "the request body is empty; send the image's bytes")
        return [("<body>", body)]
    raise ServeError(415, f"unsupported content type '{kind or 'none'}'; send multipart/form-data with 'file' "
                          "fields, a raw image (image/png, image/jpeg, ...) or JSON {\"images\": [base64, ...]}")


async def multipart_images(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}
    try:
        form = await Request(request.scope, replay).form(max_files=1024, max_fields=1024)
    except Exception as e:  # a malformed multipart body is the client's, whatever the parser calls it
        raise ServeError(400, f"the multipart body cannot be parsed ({getattr(e, 'detail', e)})") from None
    files = [f for f in form.getlist("file") if hasattr(f, "read")]
    if not files:
        raise ServeError(400, "the multipart body has no 'file' field with an image; send -F file=@image.png")
    out = []
    for k, f in enumerate(files):
        out.append((f.filename or f"file[{k}]", await f.read()))
    await form.close()
    return out


def json_images(body: bytes) -> list[tuple[str, bytes]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ServeError(400, "the JSON body cannot be parsed; send {\"images\": [base64, ...]}") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not images or not all(isinstance(s, str) for s in images):
        raise ServeError(400, "the JSON body needs \"images\": a non-empty list of base64 strings")
    out = []
    for k, text in enumerate(images):
        if text.startswith("data:") and "," in text:  # a data URL as a browser makes it
            text = text.split(",", 1)[1]
        try:
            out.append((f"images[{k}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise ServeError(400, f"images[{k}] is not valid base64") from None
    return out


# ---------------------------------------------------------------- predictions as predict's CSV fields

def numeric_columns(task) -> set[str]:
    """The prediction columns holding numbers (the rest are class names or codes)."""
    cols = {"prob", "value", "combined_prob"}
    for h in getattr(task, "heads", ()):
        cols.add(f"{h.name}_prob")
        if h.type == "regression":
            cols.add(h.name)
    return cols


def prediction_json(probs: torch.Tensor, classes: Sequence[str], task, top_k: int) -> list[dict]:
    """One dict per row with the fields of predict's CSV row: ``prob_<c>`` columns as ``probs`` {c: p},
    ``top_k`` as a list, numbers as numbers."""
    header = prediction_header(classes, task)
    numeric = numeric_columns(task)
    out = []
    for cells in prediction_cells(probs, classes, top_k, task):
        entry: dict[str, Any] = {}
        for col, cell in zip(header, cells):
            if col.startswith("prob_"):
                entry.setdefault("probs", {})[col[len("prob_"):]] = float(cell)
            elif col == "top_k":
                entry["top_k"] = cell.split("|")
            else:
                entry[col] = float(cell) if col in numeric else cell
        out.append(entry)
    return out


# ---------------------------------------------------------------- the app

class Service:
    """One predictor behind a batcher, a decode pool and the metrics."""

    def __init__(self, predictor: Predictor, options: ServeOptions):
        self.predictor, self.options = predictor, options
        self.metrics = Metrics()
        self.ready = False
        self.meta: Optional[dict] = None
        info = predictor.info
        self.limits = ImageLimits(info.min_side, options.max_pixels if options.max_pixels else info.max_pixels)
        self.decode_pool = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="imgcls-decode")
        self.batcher = MicroBatcher(self.forward, options.max_batch_size, options.batch_timeout_ms / 1000,
                                    options.max_queue, self.metrics.batch.observe, self.metrics.cancelled.inc)
        predictor.tta_plan(options.tta)  # a model that forbids flips refuses --tta now, not per request
        self.session = onnx_session(predictor, options.tta) if options.backend == "onnx" else None

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        with self.metrics.forward.time():  # the model's share of a request's latency (bench_serve reads it)
            if self.session is not None:
                return onnx_probabilities(self.session, self.predictor, views)
            return self.predictor.probabilities(views, tta=self.options.tta)

    def decode(self, name: str, data: bytes) -> list[torch.Tensor]:
        try:
            return self.predictor.preprocess(data, self.limits)
        except BadImageError as e:
            raise ServeError(400, f"image '{name}' cannot be read: {e.reason or e}") from None
        except Exception as e:  # any decoder failure on hostile bytes is that image's problem, not a 500
            raise ServeError(400, f"image '{name}' cannot be decoded ({type(e).__name__})") from None

    async def warm_up(self) -> None:
        """One forward of a blank image per view, so the first request does not pay for it; then /ready."""
        loop = asyncio.get_running_loop()
        views = [torch.zeros(1, v.channels, v.image_size, v.image_size, dtype=torch.uint8)
                 for v in self.predictor.views]
        await loop.run_in_executor(self.batcher.pool, self.forward, views)
        self.ready = True

    async def predict(self, request: Request, top_k: int) -> list[dict]:
        """The answer to one POST /predict, abandoned (and its queued images with it) if the client leaves."""
        try:
            body = await read_body(request, self.options.max_body_bytes)
        except ClientDisconnect:
            raise self.client_gone() from None
        work = asyncio.ensure_future(self.answer(request, body, top_k))
        del body  # answer() holds it only until the images are decoded
        watch = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # the client left, or --timeout-s cancelled us: cancelling work cancels its images' futures
            watch.cancel()
            if not work.done():
                work.cancel()
        if work not in done:
            raise self.client_gone()
        return work.result()

    def client_gone(self) -> ServeError:
        self.metrics.disconnected.inc()
        return ServeError(CLIENT_GONE, "the client disconnected before the answer")

    async def answer(self, request: Request, body: bytes, top_k: int) -> list[dict]:
        named = await images_in(request, body)
        names = [n for n, _ in named]
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*[loop.run_in_executor(self.decode_pool, self.decode, n, b) for n, b in named])
        del body, named  # the encoded bytes are not needed while the images wait for a batch
        try:
            rows = await asyncio.gather(*[self.batcher.submit(v) for v in decoded])
        except QueueFull as e:
            raise ServeError(503, f"the server is busy: {e}; retry shortly", {"Retry-After": "1"}) from None
        finally:
            self.metrics.queue.set(self.batcher.depth)
        probs = torch.stack(rows)
        finite = torch.isfinite(probs).all(dim=1).tolist()
        if not all(finite):
            bad = names[finite.index(False)]
            raise ServeError(422, f"the model's output for image '{bad}' is not finite (NaN or inf)")
        self.metrics.images.inc(len(rows))
        p = self.predictor
        return prediction_json(probs, p.classes, p.info.task_type, top_k)

    def metadata(self) -> dict:
        if self.meta is None:  # once: hashing the weights reads them
            self.meta = self.describe()
        return self.meta

    def describe(self) -> dict:
        from ... import __version__
        p, info, o = self.predictor, self.predictor.info, self.options
        return {
            "task": info.task, "classes": p.classes, "image_size": info.image_size, "channels": info.channels,
            "crop_pct": info.crop_pct, "interpolation": info.interpolation, "mean": list(info.mean),
            "std": list(info.std),
            "models": [{"run": m.run_dir.name, "path": str(m.run_dir), "architecture": m.info.architecture,
                        "weights_sha256": sha256(m.run_dir / "best.safetensors")} for m in p.members],
            "imgcls": __version__, "device": str(p.device), "backend": o.backend, "tta": o.tta,
            "batching": {"max_batch_size": o.max_batch_size, "batch_timeout_ms": o.batch_timeout_ms,
                         "max_queue": o.max_queue},
            "limits": {"max_body_mb": o.max_body_mb, "max_pixels": self.limits.max_pixels,
                       "min_side": self.limits.min_side, "timeout_s": o.timeout_s},
        }


def sha256(path: Path) -> Optional[str]:
    if not path.is_file():
        return None
    return file_sha256(path)


def parse_top_k(text: Optional[str], default: int) -> int:
    if text is None:
        return default
    try:
        k = int(text)
    except ValueError:
        k = 0
    if k < 1:
        raise ServeError(400, f"top_k must be a whole number of at least 1, got '{text[:40]}'")
    return k


def build_app(service: Service, token: Optional[str]) -> Any:
    """The FastAPI app around ``service``, wrapped in the Guard (token, body size, metrics)."""
    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        warm = asyncio.get_running_loop().create_task(service.warm_up())
        yield
        warm.cancel()
        await service.batcher.stop()
        service.decode_pool.shutdown(wait=False)

    app = FastAPI(title="imgcls serve", lifespan=lifespan, version=service.metadata()["imgcls"],
                  description="Predictions of a trained imgcls run, with predict's preprocessing and fields.")
    app.state.service = service

    @app.exception_handler(ServeError)
    async def refused(request: Request, e: ServeError):
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)

    add_routes(app, service)
    endpoints = ["/", "/predict", "/health", "/ready", "/metadata", "/metrics", "/docs", "/openapi.json"]
    return Guard(app, token, service.options.max_body_bytes, service.metrics, endpoints)


PREDICT_BODY = {"requestBody": {"content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}}}}}


def add_routes(app, service: Service) -> None:
    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request):
        """One prediction per image, in order, with the fields of `imgcls predict`'s CSV row."""
        top_k = parse_top_k(request.query_params.get("top_k"), service.options.top_k)
        t0 = time.perf_counter()
        try:
            out = await asyncio.wait_for(service.predict(request, top_k), service.options.timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(503, f"no answer within {service.options.timeout_s:g} s (--timeout-s); retry later",
                             {"Retry-After": "1"}) from None
        service.metrics.latency.observe(time.perf_counter() - t0)
        return {"predictions": out}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not service.ready:
            return JSONResponse({"status": "warming up"}, status_code=503)
        return {"status": "ready"}

    @app.get("/metadata")
    async def metadata():
        return service.metadata()

    @app.get("/metrics")
    async def metrics():
        service.metrics.queue.set(service.batcher.depth)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE


def make_app(model: Any, options: ServeOptions = ServeOptions(), *, ensemble: Sequence[str | os.PathLike] = (),
               device: str = "auto") -> Any:
    """The ASGI app serving ``model`` (a run folder, a cv folder, or a Predictor from imgcls.load), plus
    ``ensemble`` runs averaged in as predict --ensemble does. Mount it or wrap it in middleware; run it with
    uvicorn (``imgcls serve`` does)."""
    from ..predictor import load
    options.check()
    predictor = model if isinstance(model, Predictor) else load(model, ensemble, device)
    token = options.token if options.token is not None else os.environ.get(TOKEN_ENV) or None
    return build_app(Service(predictor, options), token)
