"""Benchmark of `imgcls serve` against offline `imgcls predict` on the same images, in the same run.

Models:
  * the demo: configs/demo.yaml trained for --demo-epochs (default 3) into a temporary folder by this script's
    setup (or --demo-run RUN reuses a trained run), asked about MNIST-5k validation digits (28 px, gray);
  * timm resnet18 at 224 px with random weights in a run folder as training writes it (no hub is reachable
    here; a forward costs the same whatever the weights), asked about random 224 px RGB PNGs.
For each model, side by side in one process tree, so the other work on the machine hits both alike:
  * offline: Predictor.predict_files, `imgcls predict`'s own path, in this process after a warm-up, on
    --demo-images validation digits or --images random PNGs: images/s, measured before and after the serve levels (the ratio uses their mean);
  * serve: `imgcls serve RUN --device cpu` (batches of up to 32 within 5 ms) in its own process on
    127.0.0.1, driven by ApacheBench: `ab -p IMAGE.png -T image/png -c C -n N -t T` (a bounded count and time,
    a new connection per request) at concurrency 1, 8 and 32: images/s, the ratio to offline, p50 and p99;
  * the batch-size distribution at each concurrency (the /metrics histogram's counts, before and after);
  * overhead per request at concurrency 1: inside the server (mean of imgcls_serve_request_seconds minus
    mean of imgcls_serve_forward_seconds) and end to end (ab's mean latency minus that forward);
  * the demo: server RSS after 100 requests, then after --rss-requests (10,000) more;
  * a cross-check (httpx, --images requests at concurrency 8): every served class equals offline predict's.
Needs ab: `make bench-serve-setup` (apt-get install -y apache2-utils). Writes its section of BENCHMARKS.md
unless --no-write.

    python bench/bench_serve.py [--requests 600] [--rss-requests 10000] [--demo-run RUN] [--no-resnet] [--no-write]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
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

import imgcls  # noqa: E402
from imgcls import __version__  # noqa: E402
from imgcls.data import demo_root  # noqa: E402
from imgcls.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from imgcls.inference.predictor import load  # noqa: E402
from imgcls.io import atomic_write_json  # noqa: E402
from imgcls.models import create_model  # noqa: E402
from imgcls.models.modelinfo import save_weights  # noqa: E402

CONCURRENCY = (1, 8, 32)
AB_TIME_LIMIT_S = 300  # per ab call, on top of its request count
CONTENDED = (" The load average was above the core count: other jobs took CPU from the server and from offline "
             "predict unevenly (compare offline's before and after readings), so one run's ratios are indicative, "
             "not a measurement of imgcls alone; rerun on a quiet machine.")
DEMO, RESNET = "demo (digits_cnn, 28 px, gray, trained)", "resnet18, 224 px (random weights)"


# ---------------------------------------------------------------- setup: the runs and their images

def train_demo(folder: Path, epochs: int) -> tuple[Path, str]:
    """configs/demo.yaml for ``epochs`` epochs; (run folder, its best val/acc as text)."""
    from imgcls.config import load_config
    cfg = load_config(ROOT / "configs/demo.yaml", [f"train.epochs={epochs}", f"run.dir={folder}", "run.report=false",
                                                  "train.progress=false"])
    t0 = time.perf_counter()
    res = imgcls.train(cfg, log=lambda *a: None)
    acc = res.best_metrics.get("val/acc")
    return res.run_dir, f"{epochs} epochs in {time.perf_counter() - t0:.0f} s, best val/acc {acc:.3f}"


def write_resnet_run(folder: Path) -> Path:
    """A run folder as training writes it (best.safetensors + model.json), with random weights."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_weights(folder / "best.safetensors", create_model("resnet18", 10, 3))
    atomic_write_json(folder / "model.json", {
        "format": 1, "architecture": "resnet18", "classes": [str(k) for k in range(10)], "channels": 3,
        "image_size": 224, "resize": 224, "crop_pct": 1.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "augment": "default", "allows_flip": True, "epoch": 1, "monitor": {"name": "val/acc", "value": None},
        "train_counts": [1] * 10, "imgcls": __version__})
    return folder


def demo_images(n: int) -> list[Path]:
    return sorted((demo_root() / "val").rglob("*.png"))[:n]


def random_images(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


# ---------------------------------------------------------------- offline predict

def offline_rate(predictor, paths: list[Path]) -> float:
    """Images/s of predict_files (imgcls predict's path, default batch and workers) on ``paths``."""
    t0 = time.perf_counter()
    predictor.predict_files([str(p) for p in paths])
    return len(paths) / (time.perf_counter() - t0)


# ---------------------------------------------------------------- the server and its metrics

def start_server(run: Path, log: Path) -> tuple[subprocess.Popen, str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(run), "--port", str(port), "--device", "cpu",
                             "--max-queue", "4096"], stderr=open(log, "w"), cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            if httpx.get(base + "/ready").status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server never became ready; see {log}")


def scrape(base: str) -> dict[str, float]:
    """The /metrics samples this benchmark reads, by name (labels kept in the name)."""
    out = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(("imgcls_serve_batch_size_bucket", "imgcls_serve_request_seconds_",
                            "imgcls_serve_forward_seconds_")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def batch_shares(before: dict, after: dict) -> dict[str, float]:
    """Share of the forwards between two scrapes per batch-size bucket (the histogram is cumulative)."""
    cum = {}
    for name, v in after.items():
        m = re.fullmatch(r'imgcls_serve_batch_size_bucket\{le="([^"]+)"\}', name)
        if m and m.group(1) != "+Inf":
            cum[float(m.group(1))] = v - before.get(name, 0.0)
    total = max(cum.values()) if cum else 0.0
    out, prev = {}, 0.0
    for le in sorted(cum):
        if cum[le] - prev > 0:
            out[f"<={le:g}"] = (cum[le] - prev) / total
        prev = cum[le]
    return out


def mean_ms(before: dict, after: dict, histogram: str) -> float:
    n = after[histogram + "_count"] - before.get(histogram + "_count", 0.0)
    return 1000 * (after[histogram + "_sum"] - before.get(histogram + "_sum", 0.0)) / n if n else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- load generators

def ab(base: str, image: Path, requests: int, concurrency: int, times: Path) -> dict:
    """One bounded ab run: POST ``image`` as the raw body ``requests`` times, ``concurrency`` at a time.
    Percentiles come from the per-request times ab writes with -g (its own -e table misreads the top rows)."""
    cmd = ["ab", "-q", "-s", "120", "-t", str(AB_TIME_LIMIT_S), "-n", str(requests), "-c", str(concurrency),
           "-p", str(image), "-T", "image/png", "-g", str(times), base + "/predict"]  # -n after -t: -t resets it
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=AB_TIME_LIMIT_S + 60)
    if out.returncode != 0:
        raise SystemExit(f"ab failed ({out.returncode}): {out.stderr.strip() or out.stdout[-500:]}")
    text = out.stdout

    def field(label: str, default=None) -> float:
        m = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", text, re.M)
        if m is None and default is None:
            raise SystemExit(f"ab's output has no '{label}':\n{text}")
        return float(m.group(1)) if m else default
    done, non2xx = int(field("Complete requests")), int(field("Non-2xx responses", 0))
    m = re.search(r"Failed requests:\s+(\d+)\n\s+\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)",
                  text)
    broken = int(m.group(2)) + int(m.group(3)) + int(m.group(5)) if m else int(field("Failed requests"))
    if non2xx or broken:
        raise SystemExit(f"{non2xx} non-2xx answers and {broken} failed connections in {done} requests:\n{text}")
    total_ms = sorted(float(line.split("\t")[4]) for line in times.read_text().splitlines()[1:])  # ttime
    return {"rate": field("Requests per second"), "requests": done, "mean": statistics.mean(total_ms),
            "p50": statistics.median(total_ms), "p99": total_ms[min(len(total_ms) - 1, int(0.99 * len(total_ms)))]}


async def httpx_check(base: str, paths: list[Path], concurrency: int) -> tuple[list[str], float]:
    """Every image once over httpx (raw bodies, ``concurrency`` in flight): (served classes in order, img/s)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(client, p):
        async with sem:
            r = await client.post(base + "/predict", content=p.read_bytes(), headers={"content-type": "image/png"})
            r.raise_for_status()
            return r.json()["predictions"][0]["pred"]
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        t0 = time.perf_counter()
        preds = await asyncio.gather(*[one(client, p) for p in paths])
        return preds, len(paths) / (time.perf_counter() - t0)


# ---------------------------------------------------------------- one model

def bench_model(name: str, run: Path, paths: list[Path], tmp: Path, requests: int, rss_requests: int) -> dict:
    predictor = load(run, device="cpu")
    res = predictor.predict_files([str(p) for p in paths])  # warm-up, and the classes the server must agree with
    offline_classes = [predictor.classes[i] for i in res.probs.argmax(1).tolist()]
    load_start = os.getloadavg()[0]
    offline = [offline_rate(predictor, paths)]
    proc, base = start_server(run, tmp / f"{run.name}-server.log")
    rows, shares = {}, {}
    try:
        ab(base, paths[0], 64, 8, tmp / "ab.tsv")  # warm-up
        for c in CONCURRENCY:
            before = scrape(base)
            rows[c] = ab(base, paths[0], requests if c > 1 else max(50, requests // 3), c, tmp / "ab.tsv")
            after = scrape(base)
            shares[c] = batch_shares(before, after)
            rows[c]["server_ms"] = mean_ms(before, after, "imgcls_serve_request_seconds")
            rows[c]["forward_ms"] = mean_ms(before, after, "imgcls_serve_forward_seconds")
        served, check_rate = asyncio.run(httpx_check(base, paths, 8))
        rss = None
        if rss_requests:
            ab(base, paths[0], 100, 32, tmp / "ab.tsv")
            first = rss_mb(proc.pid)
            ab(base, paths[0], rss_requests, 32, tmp / "ab.tsv")
            rss = (first, rss_mb(proc.pid), rss_requests)
    finally:
        proc.terminate()
        proc.wait(60)
    offline.append(offline_rate(predictor, paths))
    agree = sum(a == b for a, b in zip(served, offline_classes))
    return {"name": name, "offline": offline, "rows": rows, "shares": shares, "rss": rss, "images": len(paths),
            "agree": agree, "check_rate": check_rate, "load": (load_start, os.getloadavg()[0])}


def table(results: list[dict]) -> str:
    lines = ["| model | load avg (start, end) | offline predict (img/s, before / after) | concurrency | serve, ab (img/s) "
             "| ratio | p50 (ms) | p99 (ms) | forwards by batch size |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        off = statistics.mean(r["offline"])
        for c, row in r["rows"].items():
            sizes = ", ".join(f"{k}: {v:.0%}" for k, v in r["shares"][c].items())
            lines.append(f"| {r['name']} | {r['load'][0]:.1f}, {r['load'][1]:.1f} | {r['offline'][0]:.0f} / "
                         f"{r['offline'][1]:.0f} | {c} | {row['rate']:.1f} | {off and row['rate'] / off:.2f}x | "
                         f"{row['p50']:.1f} | {row['p99']:.1f} | {sizes} |")
    lines.append("")
    for r in results:
        one = r["rows"][1]
        lines.append(f"- {r['name']}: overhead per request at concurrency 1: {one['server_ms'] - one['forward_ms']:.1f} "
                     f"ms inside the server (mean request {one['server_ms']:.1f} ms minus mean forward "
                     f"{one['forward_ms']:.1f} ms), {one['mean'] - one['forward_ms']:.1f} ms end to end (ab's mean "
                     f"{one['mean']:.1f} ms, new TCP connection each, minus the forward)")
        lines.append(f"- {r['name']}: cross-check over httpx (raw bodies, concurrency 8, kept-alive connections): "
                     f"{r['check_rate']:.1f} img/s; served class equals offline predict's for {r['agree']} of "
                     f"{r['images']} images")
        if r["rss"]:
            first, after, n = r["rss"]
            lines.append(f"- {r['name']}: server RSS {first:.0f} MB after the levels above and 100 more requests, "
                         f"{after:.0f} MB after {n:,} more ({after / first - 1:+.1%})")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=600, help="ab requests per concurrency level (a third at 1)")
    ap.add_argument("--rss-requests", type=int, default=10_000, help="requests between the two RSS readings (demo)")
    ap.add_argument("--images", type=int, default=256, help="resnet18: images for offline predict and the cross-check")
    ap.add_argument("--demo-images", type=int, default=1000, help="demo: validation digits for the same (1,000: all)")
    ap.add_argument("--demo-run", type=Path, help="a trained demo run folder to serve instead of training one")
    ap.add_argument("--demo-epochs", type=int, default=3, help="epochs of configs/demo.yaml when training it here")
    ap.add_argument("--no-resnet", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    if shutil.which("ab") is None:
        raise SystemExit("ab (ApacheBench) is not installed; run `make bench-serve-setup` "
                         "(apt-get install -y apache2-utils) and rerun.")
    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if a.demo_run is not None:
            demo_run, trained = a.demo_run, f"the run at {a.demo_run}"
        else:
            demo_run, trained = train_demo(tmp / "demo", a.demo_epochs)
            trained = f"trained here: `configs/demo.yaml train.epochs={a.demo_epochs}`, {trained}"
        print(f"demo model: {trained}", flush=True)
        results.append(bench_model(DEMO, demo_run, demo_images(a.demo_images), tmp, a.requests, a.rss_requests))
        print(table(results[-1:]), flush=True)
        if not a.no_resnet:
            run = write_resnet_run(tmp / "resnet18")
            results.append(bench_model(RESNET, run, random_images(tmp / "resnet-images", a.images, 224), tmp,
                                       a.requests, 0))
            print(table(results[-1:]), flush=True)
    cmd = " ".join(["python bench/bench_serve.py", *(argv if argv is not None else sys.argv[1:])])
    body = (f"`{cmd}` on {platform.processor() or platform.machine()}, `nproc` {os.cpu_count()}, load average "
            f"{load_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (other engineers' jobs share "
            f"the cores), torch {torch.__version__}, one run (offline predict measured before and after each "
            f"model's serve levels; the ratio is to their mean). Demo model: {trained}. Server: `imgcls serve RUN "
            "--device cpu --max-queue 4096` (batches of up to 32 within 5 ms, 2 torch threads); load: ApacheBench "
            f"(`ab -p IMAGE.png -T image/png -c C -n N -t {AB_TIME_LIMIT_S}` against 127.0.0.1, one image per request, "
            f"{a.requests} requests at concurrency 8 and 32, {max(50, a.requests // 3)} at 1), on the same cores as the "
            "server. Offline: `imgcls predict`'s path (Predictor.predict_files, batch 64) on images of the same "
            f"kind ({a.demo_images} validation digits; {a.images} random PNGs for resnet18), in the benchmark's "
            "process; ab posts the first of them every time. Latencies are ab's per-request times (1 ms "
            "resolution)." + (CONTENDED if max(load_start, os.getloadavg()[0]) > (os.cpu_count() or 1) else "")
            + "\n\n" + table(results))
    print(body)
    if not a.no_write:
        from _report import write_section
        write_section("Serving (`imgcls serve`)", body)


if __name__ == "__main__":
    main()
