"""``imgcls train ... --nproc N``: N data-parallel processes on this machine through torchrun's own
launcher (``torch.distributed.run``), exactly as ``torchrun --standalone --nproc-per-node N -m imgcls
train ...`` would start them, plus what a user wants from one command: rank 0's output on the console,
the other ranks' logs kept in the run folder when one fails, one sentence naming the rank that failed
first and its error, and the resume command after a stop.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import UserError


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


def launch(argv: Sequence[str], nproc: int, resume_dir: str | None = None, resume_hint: str | None = None) -> int:
    """Run ``imgcls <argv>`` in ``nproc`` processes; returns the exit status. ``resume_hint``: the command
    to print for continuing after a stop (default: ``imgcls train --resume RUN --nproc N``)."""
    if nproc < 1:
        raise UserError(f"--nproc must be 1 or more, got {nproc}.")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    work = Path(tempfile.mkdtemp(prefix="imgcls-launch-"))
    run_dir_file = work / "run_dir"
    saved_env = dict(os.environ)  # what the processes inherit is set here, and undone afterwards
    os.environ["IMGCLS_RUN_DIR_FILE"] = str(run_dir_file)  # rank 0 writes the run folder it created
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun would pin 1 thread and warn; share the cores instead
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    # rank 0 prints to the console as one process would (no per-line rank prefix); the others' output
    # goes to log files, copied into the run folder when the job fails
    quiet = [f"--redirects={','.join(f'{r}:3' for r in range(1, nproc))}"] if nproc > 1 else []
    args = get_args_parser().parse_args([
        "--standalone", f"--nproc-per-node={nproc}", f"--log-dir={work / 'logs'}", *quiet,
        "--module", "imgcls", *argv])
    code = 0

    def resume_with(run_dir: str) -> str:
        return resume_hint or f"imgcls train --resume {run_dir} --nproc {nproc}"
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        run_dir = _run_dir(run_dir_file, resume_dir)
        kept = _keep_logs(work / "logs", run_dir)
        print(f"error: {_describe(rank, failure)}; the job stopped"
              + (f" (each rank's log is in {kept})" if kept else "")
              + (f". Resume with: {resume_with(run_dir)}"
                 if run_dir and (Path(run_dir) / "last.pt").is_file() else "."), file=sys.stderr)
        code = 1
    except SignalException as e:
        run_dir = _run_dir(run_dir_file, resume_dir)
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


def _run_dir(run_dir_file: Path, resume_dir: str | None) -> str | None:
    if resume_dir:
        return resume_dir
    return run_dir_file.read_text().strip() if run_dir_file.is_file() else None


def _describe(rank: int, failure) -> str:
    """'rank 1 failed first: <its error>' from torchrun's record of the failure."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    message = str(message or "").strip()
    if not message or message.startswith("To enable traceback"):
        if failure.exitcode is not None and failure.exitcode < 0:
            message = f"killed by signal {failure.signal_name()}"
        else:
            message = f"exit status {failure.exitcode}"
    first = message.splitlines()[-1] if message.count("\n") else message
    first = first.removeprefix("UserError: ")  # imgcls's own sentences need no class name
    return f"rank {rank} failed first: {first.rstrip('.')}"


def _keep_logs(log_root: Path, run_dir: str | None) -> str | None:
    """Copy each redirected rank's stdout/stderr from torchrun's log folder into RUN/logs/rank-<r>.log
    (rank 0 wrote to the console)."""
    if not run_dir or not Path(run_dir).is_dir() or not log_root.is_dir():
        return None
    out = Path(run_dir) / "logs"
    out.mkdir(exist_ok=True)
    for rank_dir in sorted(p for p in log_root.glob("*/attempt_*/*") if p.is_dir()):
        text = "".join(f.read_text(errors="replace") for f in (rank_dir / "stdout.log", rank_dir / "stderr.log")
                       if f.is_file())
        if text:
            (out / f"rank-{rank_dir.name}.log").write_text(text)
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
