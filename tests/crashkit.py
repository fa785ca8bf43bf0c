"""Helpers for tests that kill training runs and compare run folders.

Killed runs are real processes. Most are forked from a multiprocessing *forkserver* that has
imported torch and imgcls but never computed anything: a child forked from a process that has
run an OpenMP parallel region (the pytest process, after any training) hangs in libgomp, and
a fresh ``python -m imgcls`` costs ~5 s of imports. A few tests use the real CLI as a subprocess.
"""
from __future__ import annotations

import csv
import gc
import io
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

_CTX = None
REPO = Path(__file__).resolve().parents[1]


def context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["imgcls.cli", "imgcls.engine.fit", "imgcls.io", "crashkit"])
    return _CTX


# ---------------------------------------------------------------- the child side

def _child(argv: list[str], kill_at: Optional[tuple[str, int]], how: str, log: str, env: dict) -> None:
    # A forkserver child would start DataLoader workers through a forkserver of its own (~4 s of
    # imports each time); fork them, as `python -m imgcls` does on Linux.
    mp.set_start_method("fork", force=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    try:
        from imgcls.cli import main
        from imgcls import io as checkpoint

        if kill_at is not None:
            label, n = kill_at
            seen = [0]

            def hook(at: str) -> None:
                if label in (at, "*"):  # "*": the n-th hook of any kind
                    seen[0] += 1
                    if seen[0] == n:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os.write(1, f"\n@hook {at}\n".encode())
                        if how == "exit":      # a crash without any clean-up
                            os._exit(3)
                        os.kill(os.getpid(), getattr(signal, how))  # SIGKILL, SIGSTOP, SIGTERM, SIGINT

            checkpoint._SAVE_HOOK = hook
        rc = main(argv)
    except BaseException:
        traceback.print_exc()
        rc = 99
    gc.collect()  # shuts down persistent DataLoader workers before the process ends
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(rc)


def start_child(argv: list[str], log: Path, kill_at: Optional[tuple[str, int]] = None, how: str = "SIGKILL",
                env: Optional[dict] = None):
    """Start ``imgcls <argv>`` in a forked child (see run_child) and return its multiprocessing.Process."""
    p = context().Process(target=_child, args=(argv, kill_at, how, str(log), dict(env or {})))
    p.start()
    return p


def run_child(argv: list[str], log: Path, kill_at: Optional[tuple[str, int]] = None, how: str = "SIGKILL",
              timeout: float = 120, env: Optional[dict] = None) -> int:
    """Run ``imgcls <argv>`` in a forked child; with ``kill_at=(hook label, n)`` it dies at the n-th such hook
    (label "*": any hook), after writing "@hook <label>" to ``log``.

    Returns the exit status (negative signal number when killed by a signal).
    """
    p = start_child(argv, log, kill_at, how, env)
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise AssertionError(f"child {argv} did not finish within {timeout} s; log:\n{Path(log).read_text()}")
    return p.exitcode


def wait_stopped(pid: int, timeout: float = 60) -> None:
    """Wait until process ``pid`` is stopped (SIGSTOP delivered), so its files no longer change."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(") ", 1)[1][0] in "tT":
                return
        time.sleep(0.002)
    raise AssertionError(f"process {pid} did not stop")


# ---------------------------------------------------------------- the real CLI

def cli_process(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m imgcls <args>`` as a subprocess writing to ``log``."""
    f = open(log, "ab")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "imgcls", *args], stdout=f, stderr=subprocess.STDOUT,
                            env=env, cwd=str(log.parent))


def kill_mid_epoch(proc: subprocess.Popen, run_dir: Path, after_step: int = 0, timeout: float = 300) -> dict:
    """SIGKILL ``proc`` once its last.pt is a mid-epoch checkpoint past ``after_step``; returns that last.pt.

    The process is frozen (SIGSTOP) while last.pt is inspected, so the kill lands exactly when
    the inspected file is the newest complete checkpoint.
    """
    from imgcls.engine.checkpoint import load_last

    deadline = time.monotonic() + timeout
    last = run_dir / "last.pt"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (status {proc.returncode}) before a mid-epoch checkpoint")
        if last.exists():
            proc.send_signal(signal.SIGSTOP)
            wait_stopped(proc.pid)
            state = load_last(last)
            if state["epoch_state"] is not None and state["global_step"] > after_step:
                proc.kill()
                proc.wait()
                return state
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint appeared in time")


# ---------------------------------------------------------------- comparing run folders

def metrics_rows(run_dir: Path, drop=("seconds",)) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def _tensors(obj, prefix=""):
    """Flatten nested dicts/lists of tensors and plain values into {path: value}."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}{k}/"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}{i}/"))
    else:
        out[prefix] = obj
    return out


def assert_same_state(a: dict, b: dict, what: str) -> None:
    fa, fb = _tensors(a), _tensors(b)
    assert fa.keys() == fb.keys(), f"{what}: different keys"
    for k in fa:
        x, y = fa[k], fb[k]
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), f"{what}: {k} differs"
        else:
            assert x == y, f"{what}: {k} differs ({x!r} vs {y!r})"


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights and training state, and the same metrics apart from timing."""
    assert_same_state(load_file(a / "best.safetensors"), load_file(b / "best.safetensors"), "best.safetensors")
    la = torch.load(a / "last.pt", weights_only=True)
    lb = torch.load(b / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "epoch", "global_step", "best_value", "best_epoch",
                "bad_epochs", "epoch_state"):
        assert_same_state(la[key], lb[key], f"last.pt[{key}]")
    assert_same_state(la["rng"]["torch"], lb["rng"]["torch"], "last.pt[rng]")
    assert metrics_rows(a) == metrics_rows(b)
    for name in ("val_predictions.csv", "model.json"):
        assert (a / name).read_text() == (b / name).read_text(), name


def read_csv_text(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))
