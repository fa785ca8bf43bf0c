"""Benchmark of `imgcls serve` against offline predict on the same images, in the same run.

For each model (the demo's shape: small_cnn, 1 channel, 28 px, 10 classes; and timm resnet18 at 224 px, both
with random weights in a run folder as training writes it) it measures
  * offline:  Predictor.predict_files on the PNG files (predict's own path), images/s;
  * serve:    `imgcls serve` in its own process on 127.0.0.1, driven by a bounded asyncio httpx load
              generator (a fixed number of requests, one image per raw-body POST, C requests in flight) at
              concurrency 1, 8 and 32: images/s, its ratio to offline, p50 and p99 latency;
  * the batch-size distribution from /metrics, and the server's overhead per request at concurrency 1
    (p50 latency minus one forward of a batch of one, measured in this process);
  * resident memory of the server (VmRSS) after 100 and after 10,000 requests (the demo model).
The load generator is this script's own rather than `ab` (apache2-utils), so it needs nothing beyond the serve
extra and reports per-request latencies; it is bounded (a fixed request count and concurrency) and talks to
127.0.0.1 only.
Writes (or replaces) its section of BENCHMARKS.md unless --no-write.

    python bench/bench_serve.py [--requests 600] [--rss-requests 10000] [--no-resnet] [--no-write]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from imgcls import __version__  # noqa: E402
from imgcls.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from imgcls.inference.predictor import load  # noqa: E402
from imgcls.io import atomic_write_json  # noqa: E402
from imgcls.models import create_model  # noqa: E402
from imgcls.models.modelinfo import save_weights  # noqa: E402

MODELS = {"demo (small_cnn, 28 px, gray)": ("small_cnn", 28, 1, 10), "resnet18, 224 px": ("resnet18", 224, 3, 10)}
CONCURRENCY = (1, 8, 32)


def write_run(folder: Path, arch: str, size: int, channels: int, classes: int) -> Path:
    """A run folder as training writes it (best.safetensors + model.json), with random weights."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if channels == 3 else ([0.5], [0.25])
    save_weights(folder / "best.safetensors", create_model(arch, classes, channels))
    atomic_write_json(folder / "model.json", {
        "format": 1, "architecture": arch, "classes": [str(k) for k in range(classes)], "channels": channels,
        "image_size": size, "resize": size, "crop_pct": 1.0, "mean": mean, "std": std, "augment": "default",
        "allows_flip": True, "epoch": 1, "monitor": {"name": "val/acc", "value": None},
        "train_counts": [1] * classes, "imgcls": __version__})
    return folder


def write_images(folder: Path, n: int, size: int, channels: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        im = Image.fromarray(img).convert("L" if channels == 1 else "RGB")
        paths.append(folder / f"{i:05d}.png")
        im.save(paths[-1])
    return paths


def offline_rate(run: Path, paths: list[Path]) -> tuple[float, float]:
    """(images/s of predict_files on the files, ms of one forward of a batch of one)."""
    predictor = load(run, device="cpu")
    predictor.predict_files([str(p) for p in paths[:64]])  # warm-up
    t0 = time.perf_counter()
    predictor.predict_files([str(p) for p in paths])
    rate = len(paths) / (time.perf_counter() - t0)
    views = [torch.stack([v]) for v in predictor.preprocess(str(paths[0]))]
    predictor.probabilities(views)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        predictor.probabilities(views)
        times.append(time.perf_counter() - t0)
    return rate, statistics.median(times) * 1000


async def load_test(base: str, bodies: list[bytes], requests: int, concurrency: int) -> dict:
    """``requests`` POSTs with ``concurrency`` in flight; latencies in ms, throughput in images/s."""
    latencies, codes, next_i, dropped = [], [], iter(range(requests)), [0]

    async def worker(client):
        for i in next_i:
            t0 = time.perf_counter()
            for _ in range(3):  # a kept-alive connection the server closed as it was reused: send again
                try:
                    r = await client.post(base + "/predict", content=bodies[i % len(bodies)],
                                          headers={"content-type": "image/png"})
                    break
                except httpx.TransportError:
                    dropped[0] += 1
            else:
                raise SystemExit("three connection failures in a row")
            latencies.append((time.perf_counter() - t0) * 1000)
            codes.append(r.status_code)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        seconds = time.perf_counter() - t0
    bad = [c for c in codes if c != 200]
    if bad:
        raise SystemExit(f"{len(bad)} of {requests} requests failed (status {bad[0]})")
    latencies.sort()
    return {"rate": requests / seconds, "p50": statistics.median(latencies), "dropped": dropped[0],
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def batch_sizes(metrics: str) -> dict[str, float]:
    """Share of forwards per batch-size bucket, from the cumulative histogram."""
    cum = {float(m.group(1)): float(m.group(2)) for m in
           re.finditer(r'imgcls_serve_batch_size_bucket\{le="([^"]+)"\} (\S+)', metrics) if m.group(1) != "+Inf"}
    total = max(cum.values()) if cum else 0
    out, prev = {}, 0.0
    for le in sorted(cum):
        if cum[le] - prev > 0:
            out[f"<={le:g}"] = (cum[le] - prev) / total
        prev = cum[le]
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(run: Path) -> tuple[subprocess.Popen, str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(run), "--port", str(port), "--device", "cpu",
                             "--max-queue", "4096"], stderr=open(run.parent / "server.log", "w"), cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            if httpx.get(base + "/ready").status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server never became ready")


def bench_model(name: str, spec: tuple, tmp: Path, requests: int, rss_requests: int) -> dict:
    arch, size, channels, classes = spec
    run = write_run(tmp / arch, arch, size, channels, classes)
    paths = write_images(tmp / f"{arch}-images", 256, size, channels)
    offline, forward_ms = offline_rate(run, paths)
    bodies = [p.read_bytes() for p in paths]
    proc, base = start_server(run)
    try:
        asyncio.run(load_test(base, bodies, 64, 8))  # warm-up
        rows = {c: asyncio.run(load_test(base, bodies, requests if c > 1 else requests // 3, c)) for c in CONCURRENCY}
        sizes = batch_sizes(httpx.get(base + "/metrics").text)
        rss = None
        if rss_requests:
            asyncio.run(load_test(base, bodies, 100, 32))
            before = rss_mb(proc.pid)
            long = asyncio.run(load_test(base, bodies, rss_requests, 32))
            rss = (before, rss_mb(proc.pid), rss_requests, long["dropped"])
    finally:
        proc.terminate()
        proc.wait(60)
    return {"name": name, "offline": offline, "forward_ms": forward_ms, "rows": rows, "sizes": sizes, "rss": rss}


def table(results: list[dict]) -> str:
    lines = ["| model | offline predict (img/s) | concurrency | serve (img/s) | ratio | p50 (ms) | p99 (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for c, row in r["rows"].items():
            lines.append(f"| {r['name']} | {r['offline']:.0f} | {c} | {row['rate']:.0f} | "
                         f"{row['rate'] / r['offline']:.2f}x | {row['p50']:.1f} | {row['p99']:.1f} |")
    lines.append("")
    for r in results:
        sizes = ", ".join(f"{k}: {v:.0%}" for k, v in r["sizes"].items())
        overhead = r["rows"][1]["p50"] - r["forward_ms"]
        said = (f"{overhead:.1f} ms" if overhead > 0 else
                "not resolvable in this run (the forward, timed in the client's process, was slower than a whole request)")
        lines.append(f"- {r['name']}: forwards by batch size (all concurrencies) {sizes}; server overhead per "
                     f"request at concurrency 1: {said} (p50 {r['rows'][1]['p50']:.1f} ms minus one "
                     f"forward of a batch of one, {r['forward_ms']:.1f} ms)")
        if r["rss"]:
            before, after, n, dropped = r["rss"]
            lines.append(f"- {r['name']}: server RSS {before:.0f} MB after the first requests (warm-up, the "
                         f"concurrency levels and 100 more), {after:.0f} MB after {n:,} more ({(after / before - 1):+.1%}; {dropped} connection(s) dropped and resent)")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600, help="requests per concurrency level")
    ap.add_argument("--rss-requests", type=int, default=10_000, help="requests between the two RSS readings (demo)")
    ap.add_argument("--no-resnet", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, spec) in enumerate(MODELS.items()):
            if k and a.no_resnet:
                continue
            results.append(bench_model(name, spec, Path(tmp), a.requests, a.rss_requests if k == 0 else 0))
            print(table(results[-1:]), flush=True)
    load1 = os.getloadavg()[0]
    body = (f"`python bench/bench_serve.py --requests {a.requests} --rss-requests {a.rss_requests}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (load average "
            f"{load1:.1f} at the end: other work shared the machine), torch {torch.__version__}, one run each. "
            "Server: `imgcls serve RUN --device cpu` (batches of up to 32 within 5 ms); client: an asyncio httpx "
            "generator in another process, one PNG per request, on the same cores as the server."
            + (" The load average was above the core count, so these figures measure the contention as much as "
               "imgcls (offline predict itself ran far below its quiet-machine rate); rerun on a quiet machine "
               "before reading the ratios." if load1 > (os.cpu_count() or 1) else "") + "\n\n" + table(results))
    print(body)
    if not a.no_write:
        from _report import write_section
        write_section("Serving (`imgcls serve`)", body)


if __name__ == "__main__":
    main()
