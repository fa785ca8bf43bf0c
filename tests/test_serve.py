"""imgcls serve against a real uvicorn server on a free 127.0.0.1 port, with httpx as the client: the same
answers as `imgcls predict` for every task type, batching under concurrency, every hostile input, the token,
and a graceful SIGTERM."""
from __future__ import annotations

import asyncio
import base64
import csv
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import imgcls  # noqa: E402
from conftest import make_image_folder, small_config  # noqa: E402
from imgcls.cli import main  # noqa: E402
from imgcls.inference.serve import ServeOptions, create_app  # noqa: E402
from test_tasks_e2e import make_multihead, make_multilabel, make_regression, task_config  # noqa: E402

FAST = {"train.epochs": 1, "data.crop_pct": 0.875}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny 1-epoch run per task type (small_cnn, 16 px) and the images to ask about."""
    root = tmp_path_factory.mktemp("serve")
    folder = make_image_folder(root / "images", per_class=8)
    out = {"multiclass": (imgcls.train(small_config(folder, root / "mc", **FAST), log=lambda *a: None).run_dir,
                          folder),
           "multiclass, seed 1": (imgcls.train(small_config(folder, root / "mc1", **FAST, **{"train.seed": 1}),
                                               log=lambda *a: None).run_dir, folder)}
    heads = {"colour": {"classes": ["r", "g", "b"]}, "stripes": {"classes": ["plain", "striped"]},
             "age": {"type": "regression"}}
    makers = {"multilabel": (make_multilabel, {"task.type": "multilabel"}),
              "regression": (make_regression, {"task.type": "regression", "task.target": "age", "task.bins": [30, 60]}),
              "multihead": (make_multihead, {"task.type": "multihead", "task.heads": heads,
                                             "task.combine": "colour * 2 + stripes"})}
    for name, (make, extra) in makers.items():
        csv_path = make(root / f"{name}-data", n=32)
        cfg = task_config(csv_path, root / name, **{**extra, **FAST})
        out[name] = (imgcls.train(cfg, log=lambda *a: None).run_dir, csv_path.parent / "img")
    return out


def free_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


@contextmanager
def running(app):
    """uvicorn serving ``app`` in a thread on a free port (the bound socket is handed over: no race)."""
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    wait_ready(base)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_ready(base: str, timeout: float = 60, proc=None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{base} never became ready")


@pytest.fixture(scope="module")
def server(runs):
    """The multiclass run served with batches gathered for up to 30 ms, so concurrent requests share one."""
    with running(create_app(runs["multiclass"][0], ServeOptions(batch_timeout_ms=30, max_body_mb=1))) as base:
        yield base


def png_bytes(size=(16, 16), color=(200, 30, 30)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def csv_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def assert_same_as_row(answer: dict, row: dict) -> None:
    """An answer holds exactly the CSV row's fields: texts equal, numbers within 1e-4."""
    flat = {}
    for key, value in answer.items():
        if key == "probs":
            flat.update({f"prob_{c}": v for c, v in value.items()})
        elif key == "top_k":
            flat["top_k"] = "|".join(value)
        else:
            flat[key] = value
    assert set(flat) == set(row) - {"path"}
    for key, value in flat.items():
        if isinstance(value, float):
            assert abs(value - float(row[key])) <= 1e-4, key
        else:
            assert value == row[key], key


# ---------------------------------------------------------------- the same numbers as imgcls predict

@pytest.mark.parametrize("task", ["multiclass", "multilabel", "regression", "multihead"])
def test_answers_equal_imgcls_predict_rows(task, runs, tmp_path):
    run, images = runs[task]
    files = sorted(images.rglob("*.png"))[:12]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *map(str, files), "--out", str(out), "--top-k", "2"]) == 0
    expected = csv_rows(out)
    with running(create_app(run)) as base:
        r = httpx.post(base + "/predict?top_k=2", files=[("file", (p.name, p.read_bytes(), "image/png")) for p in files])
        meta = httpx.get(base + "/metadata").json()
    assert r.status_code == 200, r.text
    answers = r.json()["predictions"]
    assert len(answers) == len(files)
    for p, answer in zip(files, answers):  # one entry per image, in order
        assert_same_as_row(answer, expected[p.name])
    assert meta["task"] == task and meta["image_size"] == 16
    assert meta["models"][0]["weights_sha256"] == __import__("hashlib").sha256(
        (run / "best.safetensors").read_bytes()).hexdigest()


def test_several_runs_are_served_as_predict_ensembles_them(runs, tmp_path):
    (run, images), (other, _) = runs["multiclass"], runs["multiclass, seed 1"]
    files = sorted(images.rglob("*.png"))[:6]
    out = tmp_path / "ens.csv"
    assert main(["predict", str(run), *map(str, files), "--ensemble", str(other), "--out", str(out)]) == 0
    expected = csv_rows(out)
    alone = create_app(run)
    with running(create_app(run, ensemble=[other])) as base:
        answers = httpx.post(base + "/predict", files=[("file", (p.name, p.read_bytes())) for p in files]).json()
        meta = httpx.get(base + "/metadata").json()
    for p, answer in zip(files, answers["predictions"]):
        assert_same_as_row(answer, expected[p.name])
    assert [m["run"] for m in meta["models"]] == [run.name, other.name]
    with running(alone) as base:  # the ensemble's numbers are not one member's
        single = httpx.post(base + "/predict", files=[("file", (p.name, p.read_bytes())) for p in files]).json()
    assert single != answers


def test_raw_json_and_multipart_bodies_give_one_answer_and_top_k_is_honoured(server, runs):
    data = sorted(runs["multiclass"][1].rglob("*.png"))[0].read_bytes()
    multipart = httpx.post(server + "/predict", files={"file": ("a.png", data, "image/png")}).json()
    raw = httpx.post(server + "/predict", content=data, headers={"content-type": "image/png"}).json()
    b64 = httpx.post(server + "/predict", json={"images": [base64.b64encode(data).decode()]}).json()
    assert multipart == raw == b64
    assert len(multipart["predictions"][0]["top_k"]) == 3  # all three classes under the default of 5
    one = httpx.post(server + "/predict?top_k=1", content=data, headers={"content-type": "image/png"}).json()
    assert one["predictions"][0]["top_k"] == multipart["predictions"][0]["top_k"][:1]


def test_tta_flag_averages_flips_like_predict(runs, tmp_path):
    run, images = runs["multiclass"]
    files = sorted(images.rglob("*.png"))[:4]
    out = tmp_path / "tta.csv"
    assert main(["predict", str(run), *map(str, files), "--out", str(out), "--tta"]) == 0
    expected = csv_rows(out)
    with running(create_app(run, ServeOptions(tta=True))) as base:
        answers = httpx.post(base + "/predict", files=[("file", (p.name, p.read_bytes())) for p in files]).json()
    for p, answer in zip(files, answers["predictions"]):
        assert_same_as_row(answer, expected[p.name])


# ---------------------------------------------------------------- batching

def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_64_concurrent_requests_are_answered_in_batches_above_one(server, runs):
    files = sorted(runs["multiclass"][1].rglob("*.png"))[:16] * 4
    one = {p.name: httpx.post(server + "/predict", content=p.read_bytes(),
                              headers={"content-type": "image/png"}).json() for p in files[:16]}
    before = httpx.get(server + "/metrics").text

    async def go():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*[client.post(server + "/predict", content=p.read_bytes(),
                                                      headers={"content-type": "image/png"}) for p in files])
    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [200] * 64
    for p, r in zip(files, answers):  # each request got its own image's row, not a neighbour's
        assert r.json() == one[p.name]
    after = httpx.get(server + "/metrics").text
    batches = metric(after, "imgcls_serve_batch_size_count") - metric(before, "imgcls_serve_batch_size_count")
    images = metric(after, "imgcls_serve_batch_size_sum") - metric(before, "imgcls_serve_batch_size_sum")
    assert images == 64 and batches < 64  # some forward held more than one image
    forwards = metric(after, "imgcls_serve_forward_seconds_count") - metric(before, "imgcls_serve_forward_seconds_count")
    assert forwards == batches  # each forward timed once
    assert 'imgcls_serve_requests_total{endpoint="/predict",status="200"}' in after
    assert "imgcls_serve_request_seconds_bucket" in after and "imgcls_serve_queue_depth" in after


# ---------------------------------------------------------------- hostile input

def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pixel_bomb(side: int = 20000) -> bytes:
    """A 1-bit grayscale PNG of side x side zeros: about 50 kB on disk, 400 megapixels decoded."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def test_pixel_bomb_is_refused_from_its_header_naming_the_limit(server):
    bomb = pixel_bomb()
    assert len(bomb) < 100_000
    t0 = time.perf_counter()
    r = httpx.post(server + "/predict", files={"file": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 400
    assert "bomb.png" in r.json()["error"] and "89478485" in r.json()["error"]
    assert time.perf_counter() - t0 < 5  # not decoded: 400 megapixels would take far longer


def test_max_pixels_flag_lowers_the_limit(runs):
    with running(create_app(runs["multiclass"][0], ServeOptions(max_pixels=100))) as base:
        r = httpx.post(base + "/predict", content=png_bytes((16, 16)), headers={"content-type": "image/png"})
        ok = httpx.post(base + "/predict", content=png_bytes((10, 10)), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "100 pixels" in r.json()["error"]
    assert ok.status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    """A 40 MB declared body: 413 arrives after only its first 64 kB were sent."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 41943040\r\n\r\n" + b"\0" * 65536)
        reply = b""
        while b"}" not in reply:  # the headers, then the JSON error
            more = s.recv(65536)
            if not more:
                break
            reply += more
        reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413") and "max-body-mb" in reply


def test_a_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(40):
            yield b"\0" * (1 << 20)  # 40 MiB in all, with no Content-Length
    try:
        r = httpx.post(server + "/predict", content=chunks(), headers={"content-type": "image/png"})
    except httpx.HTTPError:  # the server may close the connection while the client is still sending
        return
    assert r.status_code == 413 and "max-body-mb" in r.json()["error"]


def truncated_png() -> bytes:
    data = png_bytes((64, 64), (10, 200, 90))
    return data[: len(data) // 2]


BAD = {  # name -> (request kwargs, status, a fact the error names)
    "not an image": (dict(files={"file": ("notes.txt", b"hello, not pixels", "image/png")}), 400, "notes.txt"),
    "truncated": (dict(files={"file": ("cut.png", truncated_png(), "image/png")}), 400, "cut.png"),
    "empty file": (dict(files={"file": ("empty.png", b"", "image/png")}), 400, "empty.png"),
    "empty raw body": (dict(content=b"", headers={"content-type": "image/png"}), 400, "empty"),
    "no file field": (dict(files={"other": ("a.png", b"x", "image/png")}), 400, "'file'"),
    "form without files": (dict(data={"file": "text"}, files={"x": ("a.png", b"x")}), 400, "'file'"),
    "url-encoded form": (dict(data={"file": "text"}), 415, "application/x-www-form-urlencoded"),
    "bad json": (dict(content=b"{nope", headers={"content-type": "application/json"}), 400, "JSON"),
    "json without images": (dict(json={"pictures": []}), 400, "images"),
    "bad base64": (dict(json={"images": ["***"]}), 400, "images[0]"),
    "base64 of text": (dict(json={"images": [base64.b64encode(b"text").decode()]}), 400, "images[0]"),
    "unsupported type": (dict(content=b"x", headers={"content-type": "text/plain"}), 415, "text/plain"),
    "no content type": (dict(content=b"x"), 415, "content type"),
    "broken multipart": (dict(content=b"--zz\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=zz"}),
                         400, "multipart"),
    "tiny image": (dict(content=png_bytes((2, 2)), headers={"content-type": "image/png"}), 400, "too small"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_naming_the_problem(case, server):
    kwargs, status, fact = BAD[case]
    r = httpx.post(server + "/predict", **kwargs)
    assert r.status_code == status, r.text
    assert fact in r.json()["error"]
    assert httpx.get(server + "/health").status_code == 200  # the process is still up


@pytest.mark.parametrize("query", ["top_k=0", "top_k=abc", "top_k=-3"])
def test_a_bad_top_k_is_400(query, server):
    r = httpx.post(f"{server}/predict?{query}", content=png_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "top_k" in r.json()["error"]


def test_one_bad_image_among_concurrent_good_ones_fails_alone(server, runs):
    good = sorted(runs["multiclass"][1].rglob("*.png"))[:15]

    async def go():
        async with httpx.AsyncClient(timeout=60) as client:
            posts = [client.post(server + "/predict", files={"file": (p.name, p.read_bytes(), "image/png")}) for p in good]
            posts.insert(7, client.post(server + "/predict", files={"file": ("broken.png", truncated_png(), "image/png")}))
            return await asyncio.gather(*posts)
    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [200] * 7 + [400] + [200] * 8
    assert "broken.png" in answers[7].json()["error"]


def slowed(app, seconds: float):
    """The app with its forward pass made ``seconds`` slower (a model that is busy)."""
    service = app.app.state.service
    inner = service.batcher.forward

    def slow(views):
        time.sleep(seconds)
        return inner(views)
    service.batcher.forward = slow
    return app


def test_a_full_queue_is_503_with_retry_after_and_a_slow_answer_times_out(runs):
    options = ServeOptions(max_batch_size=1, max_queue=2, timeout_s=1.0, batch_timeout_ms=0)
    app = create_app(runs["multiclass"][0], options)
    with running(app) as base:
        slowed(app, 0.6)

        async def go():
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*[client.post(base + "/predict", content=png_bytes(),
                                                          headers={"content-type": "image/png"}) for _ in range(8)])
        answers = asyncio.run(go())
        codes = [r.status_code for r in answers]
        full = [r for r in answers if r.status_code == 503 and "max-queue" in r.json()["error"]]
        late = [r for r in answers if r.status_code == 503 and "timeout-s" in r.json()["error"]]
        assert full and all(r.headers["retry-after"] == "1" for r in full)
        assert late  # queued behind 0.6 s forwards, past the 1 s timeout
        assert 200 in codes and set(codes) <= {200, 503}


def wait_for_metric(base: str, name: str, value: float, timeout: float = 20) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = httpx.get(base + "/metrics").text
        if metric(text, name) == value:
            return text
        time.sleep(0.02)
    raise AssertionError(f"{name} never reached {value}: {metric(text, name)}")


def test_a_client_that_disconnects_never_reaches_a_forward(runs):
    """Five clients send an image while the forward is busy, then hang up: their images are dropped from the
    queue unforwarded, and the server answers the next request."""
    app = create_app(runs["multiclass"][0], ServeOptions(max_batch_size=1, batch_timeout_ms=0))
    service, gate, forwarded = app.app.state.service, threading.Event(), []
    inner = service.batcher.forward

    def held(views):  # the batches the model saw; the first waits for the gate
        forwarded.append(views[0].shape[0])
        gate.wait(30)
        return inner(views)
    image = png_bytes()
    request = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: "
               + str(len(image)).encode() + b"\r\n\r\n" + image)
    with running(app) as base:
        service.batcher.forward = held
        first = []
        busy = threading.Thread(target=lambda: first.append(httpx.post(
            base + "/predict", content=image, headers={"content-type": "image/png"}, timeout=30)))
        busy.start()
        while not forwarded:
            time.sleep(0.01)
        host, port = base.removeprefix("http://").split(":")
        clients = [socket.create_connection((host, int(port)), timeout=10) for _ in range(5)]
        for c in clients:
            c.sendall(request)
        try:
            wait_for_metric(base, "imgcls_serve_queue_depth", 5)  # all five decoded and queued behind the forward
            for c in clients:
                c.close()
            wait_for_metric(base, "imgcls_serve_disconnected_total", 5)
            assert metric(httpx.get(base + "/metrics").text, "imgcls_serve_queue_depth") == 0
        finally:
            gate.set()
        busy.join(30)
        after = httpx.post(base + "/predict", content=image, headers={"content-type": "image/png"})
        text = httpx.get(base + "/metrics").text
    assert first[0].status_code == 200 and after.status_code == 200
    assert after.json() == first[0].json()
    assert forwarded == [1, 1]  # the busy request and the next one: none of the five abandoned images
    assert metric(text, "imgcls_serve_cancelled_total") == 5
    assert metric(text, "imgcls_serve_batch_size_count") == 2 and metric(text, "imgcls_serve_batch_size_sum") == 2
    assert metric(text, 'imgcls_serve_requests_total{endpoint="/predict",status="499"}') == 5


# ---------------------------------------------------------------- the other endpoints, the token

def test_health_ready_metadata_docs_and_the_page(server):
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    assert httpx.get(server + "/ready").json() == {"status": "ready"}
    meta = httpx.get(server + "/metadata").json()
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["batching"]["max_batch_size"] == 32
    assert meta["limits"]["max_body_mb"] == 1 and meta["limits"]["max_pixels"] == 89_478_485
    assert "/predict" in httpx.get(server + "/openapi.json").json()["paths"]
    assert httpx.get(server + "/docs").status_code == 200
    page = httpx.get(server + "/").text
    assert "predict" in page and "http://" not in page and "https://" not in page  # no external assets


def test_the_token_guards_everything_but_health_and_ready(runs, monkeypatch):
    monkeypatch.setenv("IMGCLS_SERVE_TOKEN", "s3cret-token")
    with running(create_app(runs["multiclass"][0])) as base:
        assert httpx.get(base + "/health").status_code == 200
        assert httpx.get(base + "/ready").status_code == 200
        for path in ("/metadata", "/metrics", "/", "/docs"):
            assert httpx.get(base + path).status_code == 401, path
        body = dict(content=png_bytes(), headers={"content-type": "image/png"})
        assert httpx.post(base + "/predict", **body).status_code == 401
        wrong = {**body["headers"], "authorization": "Bearer s3cret-tokex"}
        assert httpx.post(base + "/predict", content=body["content"], headers=wrong).status_code == 401
        right = {**body["headers"], "authorization": "Bearer s3cret-token"}
        assert httpx.post(base + "/predict", content=body["content"], headers=right).status_code == 200
        assert httpx.get(base + "/metadata", headers={"authorization": "Bearer s3cret-token"}).status_code == 200


# ---------------------------------------------------------------- the command

def test_cli_refuses_bad_options_in_one_sentence(runs, capsys):
    assert main(["serve", str(runs["multiclass"][0]), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    assert main(["serve", str(runs["multiclass"][0]), "--timeout-s", "-1"]) == 2
    assert "--timeout-s" in capsys.readouterr().err
    assert main(["serve", str(runs["multiclass"][0].parent / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow  # a fresh process imports torch and the web stack: 10-30 s on a loaded 2-core machine
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_finishes_requests_in_flight_and_exits_0(sig, runs, monkeypatch):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("IMGCLS_SERVE_TOKEN", "tok")
    proc = subprocess.Popen([sys.executable, "-m", "imgcls", "serve", str(runs["multiclass"][0]), "--port", str(port),
                             "--batch-timeout-ms", "3000", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, timeout=180, proc=proc)
        results = []

        def ask():  # each waits 3 s in the batcher for more images: in flight when SIGTERM lands
            results.append(httpx.post(base + "/predict", content=png_bytes(), timeout=30,
                                      headers={"content-type": "image/png", "authorization": "Bearer tok"}))
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        end = time.monotonic() + 60
        while time.monotonic() < end and metric(httpx.get(base + "/metrics", headers={"authorization": "Bearer tok"})
                                                .text, "imgcls_serve_in_flight") < 4:
            time.sleep(0.02)
        proc.send_signal(sig)
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r.status_code for r in results] == [200] * 4
    err = proc.stderr.read()
    startup = [line for line in err.splitlines() if line.startswith("imgcls serve:")]
    assert len(startup) == 1 and f"127.0.0.1:{port}" in startup[0] and "cpu" in startup[0]
    assert "tok" not in err.replace("token required", "")  # the token is never printed


# ---------------------------------------------------------------- the page in a browser

def test_the_page_shows_the_top_class_of_a_picked_image(server, runs, tmp_path):
    from test_report_browser import CHROMIUM_ARGS, CHROMIUM_PATHS, _unavailable  # private: the shared browser guard
    import shutil
    path = next((p for p in CHROMIUM_PATHS if os.access(p, os.X_OK)), None) or shutil.which("chromium")
    if path is None:
        _unavailable("no system Chromium at /usr/bin/chromium (install it with: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    image = sorted(runs["multiclass"][1].rglob("*.png"))[0]
    top = httpx.post(server + "/predict", content=image.read_bytes(),
                     headers={"content-type": "image/png"}).json()["predictions"][0]["pred"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "blob:", "data:"))
                    else None)
            page.goto(server + "/")
            page.set_input_files("#pick", str(image))
            page.wait_for_selector(".row.top", timeout=20_000)
            assert page.inner_text(".row.top .name") == top
            # drop the same file on the drop zone, as a person dragging it from a file manager
            page.evaluate('''([b64, name]) => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0)), dt = new DataTransfer();
                dt.items.add(new File([bytes], name, {type: 'image/png'}));
                document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
            }''', [base64.b64encode(image.read_bytes()).decode(), image.name])
            page.wait_for_function("document.querySelectorAll('.row.top').length == 2", timeout=20_000)
            assert page.locator(".row.top .name").all_inner_texts() == [top, top]
            assert not outside  # no request leaves the server
        finally:
            browser.close()


# ---------------------------------------------------------------- --backend onnx

@pytest.mark.slow  # the ONNX export (torch.onnx's dynamo exporter) takes 10-30 s here
def test_onnx_backend_serves_the_export_with_predicts_numbers(runs, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import shutil
    run = tmp_path / "run"
    shutil.copytree(runs["multiclass"][0], run)
    files = sorted(runs["multiclass"][1].rglob("*.png"))[:8]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), *map(str, files), "--out", str(out)]) == 0
    expected = csv_rows(out)
    with pytest.raises(imgcls.UserError, match="imgcls export"):
        create_app(run, ServeOptions(backend="onnx"))  # no model.onnx yet: the sentence says how to make it
    assert main(["export", str(run)]) == 0
    app = create_app(run, ServeOptions(backend="onnx"))
    service, calls = app.app.state.service, []

    class Spy:  # counts the forwards onnxruntime runs
        def __init__(self, inner):
            self.inner = inner

        def run(self, *args):
            calls.append(args)
            return self.inner.run(*args)

        def get_inputs(self):
            return self.inner.get_inputs()
    service.session = Spy(service.session)
    with running(app) as base:
        warmed = len(calls)
        answers = httpx.post(base + "/predict", files=[("file", (p.name, p.read_bytes())) for p in files]).json()
        assert httpx.get(base + "/metadata").json()["backend"] == "onnx"
    for p, answer in zip(files, answers["predictions"]):
        assert_same_as_row(answer, expected[p.name])
    assert len(calls) > warmed  # the answers came from onnxruntime, not the torch model
    with pytest.raises(imgcls.UserError, match="--tta"):
        create_app(run, ServeOptions(backend="onnx", tta=True))
