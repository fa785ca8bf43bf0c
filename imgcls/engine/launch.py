"""``imgcls train ... --nproc N``: N data-parallel processes on this machine through torchrun's own
launcher (``torch.distributed.run``), exactly as ``torchrun --standalone --nproc-per-node N -m imgcls
train ...`` would start them, plus what a user wants from one command: rank 0's output on the console
as one process would show it, every other rank's output in RUN/logs/rank-N.log (success or failure),
torchelastic's own warnings kept quiet, and on a failure one sentence naming the rank to blame (the one
that failed first, or the one that stopped answering), the last lines of its log and the resume command.
``--verbose`` shows everything: every rank's output (prefixed ``[rankN]:``) and torchelastic's logs.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError
from .dist import PROGRESS_BYTES, PROGRESS_DIR_ENV

RUN_DIR_ENV = "IMGCLS_RUN_DIR_FILE"  # rank 0 writes the run folder it created there
VERBOSE_ENV = "IMGCLS_LAUNCH_VERBOSE"
GRACE = 5.0        # seconds the other ranks have to exit after one failed with an error, before SIGKILL
TAIL_LINES = 10    # of the blamed rank's log, printed under the error line
ELASTIC_LOGGERS = ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")
_TIMED_OUT = re.compile(r"tim(ed|ing) out|timeout", re.IGNORECASE)  # gloo's and NCCL's collective timeouts


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (what each process is started with)."""
    out, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word == "--nproc":
            skip = True
            continue
        if word.startswith("--nproc="):
            continue
        out.append(word)
    return out


def launch(argv: Sequence[str], nproc: int, resume_dir: str | None = None, resume_hint: str | None = None,
           verbose: bool = False) -> int:
    """Run ``imgcls <argv>`` in ``nproc`` processes; returns the exit status. ``resume_hint``: the command
    to print for continuing after a stop (default: ``imgcls train --resume RUN --nproc N``). ``verbose``:
    every rank's output and torchelastic's logs on the console too."""
    if nproc < 1:
        raise UserError(f"--nproc must be 1 or more, got {nproc}.")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    work = Path(tempfile.mkdtemp(prefix="imgcls-launch-"))
    (work / "progress").mkdir()
    saved_env = dict(os.environ)  # what the processes inherit is set here, and undone afterwards
    os.environ.update({RUN_DIR_ENV: str(work / "run_dir"), PROGRESS_DIR_ENV: str(work / "progress"),
                       VERBOSE_ENV: "1" if verbose else ""})
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun would pin 1 thread and warn; share the cores instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    # rank 0 prints to the console as one process would (no per-line rank prefix); the others' output
    # goes to log files (--verbose: to the console too), copied into the run folder when the job ends
    others = [f"--{'tee' if verbose else 'redirects'}={','.join(f'{r}:3' for r in range(1, nproc))}",
              "--log-line-prefix-template=[rank${rank}]:"] if nproc > 1 else []
    args = get_args_parser().parse_args([
        "--standalone", f"--nproc-per-node={nproc}", f"--log-dir={work / 'logs'}", *others,
        "--module", "imgcls", *argv])
    code = 0

    def resume_with(run_dir: str) -> str:
        return resume_hint or f"imgcls train --resume {run_dir} --nproc {nproc}"
    watchdog = _Watchdog(work)
    try:
        with _elastic_logs(verbose), watchdog:
            run(args)
        _keep_logs(work, _run_dir(work, resume_dir))
    except ChildFailedError as e:
        run_dir = _run_dir(work, resume_dir)
        _report_failure(e, watchdog.killed, work, run_dir,
                        resume_with(run_dir) if run_dir and (Path(run_dir) / "last.pt").is_file() else None)
        code = 1
    except SignalException as e:
        run_dir = _run_dir(work, resume_dir)
        _keep_logs(work, run_dir)
        saved = run_dir and (Path(run_dir) / "last.pt").is_file()
        print(f"stopped by signal {int(e.sigval)}"
              + (f"; last.pt saved. Resume with: {resume_with(run_dir)}"
                 if saved else "; no run folder had been written yet"), file=sys.stderr)
        code = 130 if int(e.sigval) == 2 else 143
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        shutil.rmtree(work, ignore_errors=True)
    return code


def _run_dir(work: Path, resume_dir: str | None) -> str | None:
    if resume_dir:
        return resume_dir
    f = work / "run_dir"
    return f.read_text().strip() if f.is_file() else None


@contextmanager
def _elastic_logs(verbose: bool):
    """torchelastic's own warnings ('Sending process ... closing signal', 'failed (exitcode ...)') only
    under --verbose: the launcher says what happened in one sentence."""
    loggers = [logging.getLogger(n) for n in ELASTIC_LOGGERS]
    levels = [lg.level for lg in loggers]
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------- a rank that stops answering

def _progress(work: Path) -> dict[int, tuple[int, int, float]]:
    """Each rank's (pid, last optimizer step finished, train.dist_timeout) from its progress file."""
    out = {}
    for f in (work / "progress").glob("rank-*"):
        if not f.name[5:].isdigit():
            continue
        words = f.read_bytes()[:PROGRESS_BYTES].decode(errors="replace").split()
        if len(words) == 3 and words[0].isdigit() and words[1].isdigit():
            out[int(f.name[5:])] = (int(words[0]), int(words[1]), float(words[2]))
    return out


def _own_child(pid: int) -> bool:
    """A live (not zombie) child of this launcher: never signal a pid that has been reused since."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[1]) == os.getpid()


class _Watchdog:
    """Once a rank has failed with an error (its torchelastic error file exists), the ranks still running
    ``GRACE`` s later get SIGKILL. torchrun asks them with SIGTERM and waits 30 s, which a frozen
    process (SIGSTOP, a hang in C code) never answers; the job would outlast train.dist_timeout by that.
    ``killed``: the ranks it had to kill. Needs /proc (Linux); elsewhere torchrun's 30 s stand."""

    def __init__(self, work: Path):
        self.work, self.killed = work, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="imgcls-launch-watchdog", daemon=True)

    def __enter__(self):
        if Path("/proc/self/stat").is_file():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return False

    def _watch(self) -> None:
        failed_at = None
        while not self._stop.wait(0.25):
            if failed_at is None:
                if next((self.work / "logs").glob("*/attempt_*/*/error.json"), None) is not None:
                    failed_at = time.monotonic()
                continue
            if time.monotonic() - failed_at >= GRACE:
                for rank, (pid, _, _) in sorted(_progress(self.work).items()):
                    if _own_child(pid):
                        os.kill(pid, signal.SIGKILL)
                        self.killed.append(rank)
                return


def lost_collective_quietly(e: BaseException) -> bool:
    """Rank 0 of an ``imgcls --nproc`` job whose collective failed (a peer died or stopped answering):
    its traceback goes to RUN/logs/rank-0.log instead of the console, where the launcher names the rank
    to blame. False (raise as usual) anywhere else, and under --verbose."""
    where = os.environ.get(PROGRESS_DIR_ENV)
    if not where or not os.environ.get(RUN_DIR_ENV) or os.environ.get(VERBOSE_ENV) or os.environ.get("RANK") != "0":
        return False
    if not _from_a_collective(e):
        return False
    Path(where, "rank-0.log").write_text("".join(traceback.format_exception(e)))
    return True


def _from_a_collective(e: BaseException) -> bool:
    """Raised by torch.distributed (a DistError, or from its code) or by gloo inside DDP's backward
    (a RuntimeError naming gloo, from C++ without a Python frame of torch.distributed)."""
    import torch.distributed
    if isinstance(e, getattr(torch.distributed, "DistError", ())) or "gloo" in str(e).lower():
        return True
    frames = traceback.extract_tb(e.__traceback__)
    return any("/torch/distributed/" in f.filename.replace(os.sep, "/") for f in frames)


# ---------------------------------------------------------------- what the user reads

def _report_failure(e, killed: list[int], work: Path, run_dir: Optional[str], resume: Optional[str]) -> None:
    """One error line naming the rank to blame, the last lines of its log, the resume command."""
    kept = _keep_logs(work, run_dir)
    rank, said = _blame(e, killed, _progress(work))
    lines = [f"error: {said}; the job stopped" + (f" (the ranks' logs are in {kept})" if kept else "") + "."]
    log = Path(kept) / f"rank-{rank}.log" if kept else None
    if log is not None and log.is_file():
        tail = log.read_text(errors="replace").rstrip().splitlines()[-TAIL_LINES:]
        lines += [f"last lines of {log}:", *(f"    {line}" for line in tail)]
    if resume:
        lines.append(f"Resume with: {resume}")
    print("\n".join(lines), file=sys.stderr)


def _blame(e, killed: list[int], progress: dict) -> tuple[int, str]:
    """The rank to name, and what to say of it: a rank killed from outside the job (kill -9, the OOM
    killer); else a rank that stopped answering (the watchdog killed it, it raised nothing, and another
    rank's collective timed out waiting); else torchrun's first failure (the earliest error)."""
    failures = e.failures
    own = {r for r, f in failures.items() if f.error_file and os.path.isfile(f.error_file)}
    for r, f in sorted(failures.items()):
        if r not in own and r not in killed and f.exitcode is not None and f.exitcode < 0 \
                and -f.exitcode != signal.SIGTERM:  # torchrun's own closing signal
            return r, _describe(r, f)
    frozen = [r for r in killed if r not in own]
    if frozen and any(_TIMED_OUT.search(_message(failures[r])) for r in own):
        r = frozen[0]
        _, step, timeout = progress.get(r, (0, 0, 0.0))
        done = f"its last finished step was {step}" if step else "it had finished no training step of this job"
        return r, (f"rank {r} stopped answering ({done}; the other ranks waited train.dist_timeout={timeout:g} s "
                   f"for it, then it was killed)")
    rank, failure = e.get_first_failure()
    return rank, _describe(rank, failure)


def _message(failure) -> str:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message or "").strip()


def _describe(rank: int, failure) -> str:
    """'rank 1 failed first: <its error>' from torchrun's record of the failure."""
    message = _message(failure)
    if not message or message.startswith("To enable traceback"):
        if failure.exitcode is not None and failure.exitcode < 0:
            message = f"killed by signal {failure.signal_name()}"
        else:
            message = f"exit status {failure.exitcode}"
    first = message.splitlines()[-1] if message.count("\n") else message
    first = first.removeprefix("UserError: ")  # imgcls's own sentences need no class name
    return f"rank {rank} failed first: {first.rstrip('.')}"


def _keep_logs(work: Path, run_dir: Optional[str]) -> Optional[str]:
    """Each rank's stdout and stderr, from torchrun's log folder (ranks 1..N-1) and the launch folder
    (rank 0's traceback of a lost collective), into RUN/logs/rank-<r>.log; None before a run folder."""
    if not run_dir or not Path(run_dir).is_dir():
        return None
    out = Path(run_dir) / "logs"
    out.mkdir(exist_ok=True)
    for rank_dir in sorted(p for p in (work / "logs").glob("*/attempt_*/*") if p.is_dir()):
        parts = [rank_dir / "stdout.log", rank_dir / "stderr.log"]
        if (rank_dir / "stdout.log").is_file():  # a redirected rank: its files, even empty
            (out / f"rank-{rank_dir.name}.log").write_text(
                "".join(f.read_text(errors="replace") for f in parts if f.is_file()))
    lost = work / "progress" / "rank-0.log"
    if lost.is_file():
        (out / "rank-0.log").write_text(lost.read_text(errors="replace"))
    return str(out)


def record_failure(e: BaseException) -> None:
    """Under torchrun, leave this process's error where the launcher reads it (its error file)."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler
        handler = get_error_handler()
        handler.initialize()
        handler.record_exception(e)
    except Exception:  # noqa: BLE001 -- reporting the error must never hide it
        pass
