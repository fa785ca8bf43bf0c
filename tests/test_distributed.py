"""Data-parallel training on torchrun (gloo on the CPU): N processes x batch B train exactly as one
process with batch N*B, validation counts every sample once, one run folder, failures stop the job,
and a resume may change the process count with the global batch kept.

The references are imgcls's own single-process loop (tested elsewhere against hand-written steps)
and the files it writes; the model has group norm instead of batch norm, no dropout, no MixUp, fp32
(the conditions under which the equivalence is exact up to the order of float additions).
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_image_folder
from imgcls.data.dataset import EpochBatchSampler, shard

# 108 images -> 81 train (not a multiple of 32) / 27 validation (not a multiple of 2)
COMMON = ["data.image_size=16", "data.augment=light", "data.val_fraction=0.25", "model.name=test_efficientnet_gn",
          "model.drop_rate=0", "optim.lr=0.01", "sched.name=cosine", "train.progress=false", "run.report=false",
          "train.dist_timeout=20"]
TIMEOUT = 240


# ---------------------------------------------------------------- sharding, in process

@pytest.mark.parametrize("n,world", [(10, 2), (7, 3), (2, 4), (0, 2), (33, 4)])
def test_shards_lay_end_to_end_into_the_batch(n, world):
    batch = list(range(n))
    parts = [shard(batch, world, r) for r in range(world)]
    assert sum(parts, []) == batch
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("n", [81, 100, 98, 5])
def test_two_processes_see_the_batches_of_one_with_twice_the_batch(n):
    one = EpochBatchSampler(n, 32, seed=3)
    ranks = [EpochBatchSampler(n, 16, seed=3, world=2, rank=r) for r in range(2)]
    for epoch in range(3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        mine = [list(r) for r in ranks]
        assert len(mine[0]) == len(ranks[0]) == len(ranks[0].batches(epoch))
        merged = [a + b for a, b in zip(*mine)]
        if n % 32 >= 4 or n % 32 == 0 or n < 32:  # the layouts agree (a 2-3 sample tail joins the batch before with 2)
            assert merged == list(one)
        assert sorted(i for b in merged for _, i in b) == sorted(one.order(epoch).tolist())
        assert all(len(b) >= 2 for r in mine for b in r)  # batch norm never sees a single sample


def test_validation_shards_skip_empty_parts_and_cover_every_sample_once():
    ranks = [EpochBatchSampler(9, 2, 0, shuffle=False, world=4, rank=r) for r in range(4)]
    seen = [i for s in ranks for b in s for _, i in b]
    assert sorted(seen) == list(range(9))
    assert all(len(b) > 0 for s in ranks for b in s)


def test_resume_rule_keeps_the_global_batch():
    from imgcls.engine.build import _check_global_batch
    from imgcls.errors import UserError
    start = {"world": 2, "batch_size": 16, "accumulate": 1}
    _check_global_batch(start, 1, 32, 1)
    _check_global_batch(start, 1, 16, 2)
    with pytest.raises(UserError, match="pass train.batch_size=32"):
        _check_global_batch(start, 1, 16, 1)


def test_in_epoch_progress_is_found_in_samples_on_a_new_layout():
    from imgcls.engine.build import _place_in_epoch
    from imgcls.errors import UserError
    d = {"epoch": 0, "epoch_state": {"batches_done": 2, "samples_done": 64, "loss_sum": torch.tensor(3.0,
                                     dtype=torch.float64), "samples": 64, "skipped_steps": 0}}
    assert _place_in_epoch(d, (16,) * 5 + (17,), 0)["epoch_state"]["batches_done"] == 4
    other = _place_in_epoch(d, (32, 32, 17), 1)["epoch_state"]
    assert other["batches_done"] == 2 and other["samples"] == 0  # the sums live on rank 0 only
    with pytest.raises(UserError, match="not a batch boundary"):
        _place_in_epoch(d, (48, 33), 0)


# ---------------------------------------------------------------- real processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _imgcls(*args, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "imgcls", *args], capture_output=True, text=True, env=_env(),
                       timeout=TIMEOUT, **kw)
    # Once in about five runs under a loaded 2-core machine (-n 2 beside the kill tests), a gloo rank died
    # with SIGABRT and only "terminate called without an active exception" (C++) in its log; not yet
    # diagnosed (issue 26 item 6 is about such failures). Retry such a job once, from an empty run folder,
    # so that the flake does not hide what the test checks; any other failure still fails at once.
    run_dir = next((Path(a.split("=", 1)[1]) for a in args if a.startswith("run.dir=")), None)
    if r.returncode != 0 and "SIGABRT" in r.stderr and run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "imgcls", *args], capture_output=True, text=True, env=_env(),
                           timeout=TIMEOUT, **kw)
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("dist") / "img", per_class=36)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One process, batch 32, three epochs (in process)."""
    from imgcls import load_config, train
    run = tmp_path_factory.mktemp("ref") / "one"
    train(load_config(None, [f"data.root={data}", *COMMON, "train.epochs=3", "train.batch_size=32",
                             f"run.dir={run}"]), log=lambda *a: None)
    return run


def _weights(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_training(run: Path, ref: Path) -> None:
    a, b = _weights(run), _weights(ref)
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst < 1e-5, worst
    for got, want in zip(_rows(run / "metrics.csv"), _rows(ref / "metrics.csv"), strict=True):
        for k in want:
            if k.startswith(("val/", "train/")):
                assert float(got[k]) == pytest.approx(float(want[k]), rel=1e-4, abs=1e-5), k
    preds = _rows(run / "val_predictions.csv")
    assert len(preds) == 27 and len({r["path"] for r in preds}) == 27  # each validation image once


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_one_process_and_write_one_folder(data, reference, tmp_path):
    """Two torchrun invocations (--nnodes 2, one process each) meet at 127.0.0.1: 2 x batch 16."""
    port, root = _free_port(), tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--local-addr", "127.0.0.1",
           "-m", "imgcls", "train", f"data.root={data}", *COMMON, "train.epochs=3", "train.batch_size=16",
           f"run.root={root}"]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
             for _ in range(2)]
    outs = [p.communicate(timeout=TIMEOUT)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    folders = list(root.iterdir())
    assert len(folders) == 1, folders  # rank 0 names and writes the one run folder
    assert "global batch 32" in "".join(outs)
    _assert_same_training(folders[0], reference)


def _wait_for(predicate, seconds: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


@pytest.mark.slow
def test_stops_and_failures_end_the_job_and_resume_with_another_process_count(data, tmp_path):
    run = tmp_path / "long"
    args = [sys.executable, "-m", "imgcls", "train", f"data.root={data}", *COMMON, "train.epochs=40",
            "train.batch_size=16", "train.checkpoint_every_steps=1", f"run.dir={run}"]

    # SIGTERM on the launcher: every rank stops at the same step, last.pt is saved once, exit 143
    p = subprocess.Popen([*args, "--nproc", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
    _wait_for(lambda: (run / "metrics.csv").is_file(), 120, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert f"Resume with: imgcls train --resume {run} --nproc 2" in err
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["world"] == 2 and state["epoch"] >= 1
    stopped_at = state["global_step"]

    # resumed on two processes; then one rank is killed: the job ends within the collective timeout
    p = subprocess.Popen([sys.executable, "-m", "imgcls", "train", "--resume", str(run), "--nproc", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    rows = len(_rows(run / "metrics.csv"))
    _wait_for(lambda: len(_rows(run / "metrics.csv")) > rows, 120, p)
    ranks = _children(p.pid)
    assert len(ranks) == 2, ranks
    t0 = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 20 + 10  # train.dist_timeout=20, plus the launcher's own shutdown
    assert p.returncode != 0
    # one error line, the last lines of rank 1's log, the resume command; no traceback (rank 0's lost
    # collective went to its log), no torchelastic warnings, nothing of rank 1 on the console
    lines, log1 = err.splitlines(), run / "logs" / "rank-1.log"
    assert lines[0].startswith("error: rank 1 failed first") and "SIGKILL" in lines[0], err
    assert lines[1] == f"last lines of {log1}:" and lines[-1].startswith("Resume with: imgcls train --resume"), err
    assert "Traceback" not in out + err and "torch/distributed/elastic" not in err and "[rank" not in out + err
    assert "data parallel: 2 processes (gloo)" in log1.read_text()  # rank 1's own output, kept
    assert lines[2:-1] == [f"    {line}" for line in log1.read_text().rstrip().splitlines()[-10:]]
    log0 = run / "logs" / "rank-0.log"  # rank 0's lost collective, when it raised before torchrun's SIGTERM came
    assert not log0.exists() or "Traceback" in log0.read_text()
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["global_step"] > stopped_at  # the resume trained, and its last checkpoint is whole
    done = state["epoch"]

    # one process with batch 32 continues the 2 x 16 run (the same 32 samples per optimizer step)
    from imgcls.cli import main
    assert main(["train", "--resume", str(run), "--nproc", "1", "train.batch_size=32",
                 f"train.epochs={done + 1}"]) == 0
    assert [int(x["epoch"]) for x in _rows(run / "metrics.csv")] == list(range(1, done + 2))
    assert torch.load(run / "last.pt", weights_only=True)["world"] == 1


@pytest.mark.slow
def test_a_frozen_rank_is_named_and_killed_soon_after_the_collective_timeout(data, tmp_path):
    """kill -STOP of rank 1: rank 0 gives up after train.dist_timeout; the launcher kills the frozen rank
    (it cannot answer torchrun's SIGTERM) and names it, with the last step it finished."""
    run, timeout = tmp_path / "frozen", 10
    common = [a for a in COMMON if not a.startswith("train.dist_timeout=")]
    p = subprocess.Popen([sys.executable, "-m", "imgcls", "train", f"data.root={data}", *common, "train.epochs=40",
                          "train.batch_size=16", f"train.dist_timeout={timeout}", f"run.dir={run}", "--nproc", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    ranks = []
    try:
        _wait_for(lambda: (run / "metrics.csv").is_file(), 120, p)  # epoch 1 (3 optimizer steps) is done
        ranks = _children(p.pid)
        assert len(ranks) == 2, ranks
        t0 = time.monotonic()
        os.kill(ranks[1], signal.SIGSTOP)
        out, err = p.communicate(timeout=timeout + 60)
        took = time.monotonic() - t0
    finally:
        for pid in ranks:  # a failing test leaves nothing behind either
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
    print(f"frozen rank: the job ended {took:.1f} s after the SIGSTOP (train.dist_timeout={timeout})")
    assert took < timeout + 15, took  # before the fix: timeout + torchrun's 30 s wait for the frozen rank
    assert p.returncode == 1
    assert not [pid for pid in ranks if Path(f"/proc/{pid}").exists()]  # both ranks are gone
    first = err.splitlines()[0]
    assert first.startswith("error: rank 1 stopped answering (its last finished step was "), err
    assert int(first.split("step was ")[1].split(";")[0]) >= 3
    assert f"train.dist_timeout={timeout} s" in first and "Traceback" not in out + err, err
    assert f"last lines of {run / 'logs' / 'rank-1.log'}:" in err and "Resume with: imgcls train --resume" in err


def _failure(tmp_path, rank: int, exitcode: int, message: str = "", timestamp: int = 100):
    """torchrun's record of a failed rank; ``message`` as the rank's error file holds it (none: no file)."""
    import json

    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
    path = tmp_path / f"error-{rank}.json"
    if message:
        path.write_text(json.dumps({"message": {"message": message, "extraInfo": {"py_callstack": "",
                                                                                "timestamp": str(timestamp)}}}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(path))


TIMED_OUT = "RuntimeError: [gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation"


@pytest.mark.parametrize("rank1_exit,rank1_killed,rank0_says,blamed,said", [
    (-9, True, TIMED_OUT, 1, "rank 1 stopped answering (its last finished step was 12; the other ranks waited "
                             "train.dist_timeout=20 s"),                # frozen: killed by the watchdog
    (-9, True, "UserError: data.root is empty.", 0, "rank 0 failed first: data.root is empty"),  # not a timeout
    (-9, False, "RuntimeError: [gloo/pair.cc] Connection reset by peer", 1,
     "rank 1 failed first: Signal 9 (SIGKILL) received by PID 1001"),   # killed from outside: first, whatever the clock
    (-15, False, "UserError: data.root is empty.", 0, "rank 0 failed first: data.root is empty"),  # torchrun's SIGTERM
])
def test_the_rank_to_blame(tmp_path, rank1_exit, rank1_killed, rank0_says, blamed, said):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from imgcls.engine.launch import _blame
    e = ChildFailedError("imgcls", {0: _failure(tmp_path, 0, 1, rank0_says, timestamp=100),
                                    1: _failure(tmp_path, 1, rank1_exit, timestamp=200)})
    rank, sentence = _blame(e, [1] if rank1_killed else [], {0: (1000, 13, 20.0), 1: (1001, 12, 20.0)})
    assert rank == blamed and sentence.startswith(said), sentence


def test_a_resume_that_changes_the_global_batch_is_refused(small_run, capsys):
    from imgcls.cli import main
    before = {p: p.read_bytes() for p in small_run.run_dir.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(small_run.run_dir), "train.batch_size=8", "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "1 process(es) x batch 16 x accumulate 1 = 16" in err and "pass train.batch_size=16" in err, err
    assert before == {p: p.read_bytes() for p in small_run.run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_nproc_with_accumulation_another_task_type_and_ema_trains_like_one_process(tmp_path):
    """imgcls train --nproc 2 with multi-label targets (a 0/1 row per image), tuned thresholds and EMA:
    2 processes x batch 8 x accumulate 2 end with the weights, the EMA and every metric of 1 process x 32."""
    from test_tasks_e2e import make_multilabel

    from imgcls import load_config, train
    csv_path = make_multilabel(tmp_path / "ml")
    # SGD: Adam's division by sqrt(v) turns float-rounding differences in near-zero gradients into
    # visible weight differences (1e-3 here), which would hide what this test is about
    extra = [f"data.csv={csv_path}", "task.type=multilabel", "train.ema=0.9", "train.epochs=2", "optim.name=sgd",
             "optim.lr=0.05"]
    one, two = tmp_path / "one", tmp_path / "two"
    train(load_config(None, [*COMMON, *extra, "train.batch_size=32", f"run.dir={one}"]), log=lambda *a: None)
    r = _imgcls("train", *COMMON, *extra, "train.batch_size=8", "train.accumulate=2", f"run.dir={two}",
                "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert "2 processes (gloo) x batch 8 x accumulate 2 = global batch 32" in r.stdout
    # rank 1's output is kept after a success too; rank 0's went to the console
    assert "global batch 32" in (two / "logs" / "rank-1.log").read_text() and not (two / "logs" / "rank-0.log").exists()
    if Path("/dev/shm").is_dir():  # data.cache=auto -> memory: one copy per node, mapped by both processes
        assert "cache: memory, shared by this node's processes (/dev/shm)" in r.stdout
    a, b = (torch.load(run / "last.pt", weights_only=True) for run in (one, two))
    for part in ("model", "ema"):
        worst = max((a[part][k].double() - b[part][k].double()).abs().max().item() for k in a[part]
                    if a[part][k].is_floating_point())
        assert worst < 1e-5, (part, worst)
    for g, w in zip(_rows(two / "metrics.csv"), _rows(one / "metrics.csv"), strict=True):
        for k in (k for k in w if k.startswith("val/")):
            assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-4, abs=1e-6), k
    import json

    def numbers(x):  # every number of model.json, in order: the tuned thresholds, the monitored value
        if isinstance(x, dict):
            return [n for v in x.values() for n in numbers(v)]
        if isinstance(x, list):
            return [n for v in x for n in numbers(v)]
        return [x] if isinstance(x, float) else []
    ja, jb = (json.loads((run / "model.json").read_text()) for run in (one, two))
    assert numbers(jb) == pytest.approx(numbers(ja), rel=1e-4, abs=1e-5) and len(numbers(ja)) > 3


@pytest.mark.slow
def test_cv_with_nproc_trains_each_fold_like_one_process(data, tmp_path):
    """`imgcls cv --folds 2 --nproc 2` with batch 16: each fold is a 2-process job that trains as one
    process with batch 32 does (the in-process cv as reference), and the cv's summary and out-of-fold
    predictions cover every image once."""
    from imgcls import cross_validate, load_config
    args = [f"data.root={data}", *COMMON, "train.epochs=2"]
    ref = cross_validate(load_config(None, [*args, "train.batch_size=32", f"run.dir={tmp_path / 'one'}"]),
                         folds=2, log=lambda *a: None)
    out = _imgcls("cv", "--folds", "2", "--nproc", "2", *args, "train.batch_size=16", f"run.dir={tmp_path / 'two'}",
                  "--verbose")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("global batch 32") == 4            # both folds ran as 2-process jobs, 2 ranks each
    assert out.stdout.count("[rank1]:data parallel: 2 processes") == 2  # --verbose: rank 1's output on the console
    assert all((tmp_path / "two" / f"fold-{k}" / "logs" / "rank-1.log").is_file() for k in range(2))
    for k in range(2):
        got, want = tmp_path / "two" / f"fold-{k}", ref.cv_dir / f"fold-{k}"
        a, b = _weights(got), _weights(want)
        worst = max((a[n].double() - b[n].double()).abs().max().item() for n in a if a[n].is_floating_point())
        assert worst < 1e-5, (k, worst)
        assert len(_rows(got / "val_predictions.csv")) == len(_rows(want / "val_predictions.csv"))
    oof = _rows(tmp_path / "two" / "oof_predictions.csv")
    assert len(oof) == 108 and len({r["path"] for r in oof}) == 108
    assert not list((tmp_path / "two").glob(".fold-*.yaml"))  # the launched folds' configs are cleaned up


def test_cv_refuses_to_run_under_torchrun_and_a_process_count_below_one(data, tmp_path, monkeypatch, capsys):
    from imgcls.cli import main
    args = ["cv", "--folds", "2", f"data.root={data}", *COMMON, f"run.dir={tmp_path / 'cv'}"]
    assert main([*args, "--nproc", "0"]) == 2
    assert "nproc must be 1 or more, got 0" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")   # as torchrun would start it
    assert main(args) == 2
    assert "not under torchrun" in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()   # refused before anything was written


@pytest.mark.parametrize("status,rc,said", [(143, 143, ""), (130, 130, ""), (1, 2, "fold-0 failed (exit status 1)")])
def test_cv_with_nproc_passes_a_stopped_or_failed_fold_on(data, tmp_path, monkeypatch, capsys, status, rc, said):
    """The launcher's status for a fold decides the cv's: a signal's exit code (the launcher has printed
    the cv's resume command, which it was given), or a sentence with that command for a failure."""
    import imgcls.engine.launch
    from imgcls.cli import main
    calls = []
    monkeypatch.setattr(imgcls.engine.launch, "launch", lambda argv, n, resume_dir=None, resume_hint=None, verbose=False:
                        calls.append((argv, n, resume_hint)) or status)
    assert main(["cv", "--folds", "2", "--nproc", "2", f"data.root={data}", *COMMON, f"run.dir={tmp_path / 'cv'}"]) == rc
    (argv, n, hint), = calls                      # fold 0 was launched, and the cv stopped there
    assert argv[0] == "train" and n == 2 and hint == f"imgcls cv --resume {tmp_path / 'cv'} --nproc 2"
    assert said in capsys.readouterr().err
    assert not list((tmp_path / "cv").glob(".fold-*.yaml"))
