"""The run folder: its creation, provenance (env.json), metrics.csv rows, TensorBoard."""
from __future__ import annotations

import csv
import io
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from .. import __version__
from ..errors import UserError
from ..io import atomic_write_text


def csv_columns(metric_names: list[str]) -> list[str]:
    """metrics.csv's header: epoch, lr, the task's scalars (train/loss first), seconds."""
    return ["epoch", "lr", *metric_names, "seconds"]


def next_run_dir(root: str, name: str) -> Path:
    base = Path(root)
    n = 1
    while (base / f"{name}-{n}").exists():
        n += 1
    return base / f"{name}-{n}"


def create_run_dir(explicit: Optional[str], root: str, name: str) -> Path:
    """A new folder (``run.dir``, else ``root/name-<n>``), never an existing one: resume is the only
    way to write into one."""
    for _ in range(100):  # another process may take the same number: retry with the next one
        run_dir = Path(explicit) if explicit else next_run_dir(root, name)
        key = "run.dir" if explicit else "run.root"
        blocker = next((p for p in [run_dir.parent, *run_dir.parent.parents] if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise UserError(f"{key} '{run_dir}' lies inside '{blocker}', which is a file, not a folder; "
                            f"choose another {key}.")
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            if explicit:
                if not run_dir.is_dir():
                    raise UserError(f"run.dir '{run_dir}' is an existing file; choose another run.dir.") from None
                raise UserError(f"run folder '{run_dir}' already exists; choose another run.dir, "
                                f"or continue it with 'imgcls train --resume {run_dir}'.") from None
        except PermissionError:
            raise UserError(f"cannot create the run folder '{run_dir}' (permission denied); choose a writable "
                            f"{key}.") from None
        except OSError as e:
            raise UserError(f"cannot create the run folder '{run_dir}' ({e.strerror or e}); choose a writable "
                            f"{key}.") from None
    raise UserError(f"could not create a run folder under '{root}'; set run.dir explicitly.")


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(device: torch.device, seed: int) -> dict:
    import timm
    import torchvision
    return {
        "imgcls": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": git_commit(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "seed": seed, "argv": sys.argv,
    }


def append_metrics_row(path: Path, row: dict, columns: list[str]) -> None:
    """Rewrite metrics.csv atomically with one more row: a crash never leaves a torn line."""
    old = path.read_text() if path.exists() else ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    if not old:
        w.writeheader()
    w.writerow({k: row.get(k, "") for k in columns})
    atomic_write_text(path, old + buf.getvalue())


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Keep the header and the rows of the first ``epochs_done`` epochs of metrics.csv."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= epochs_done]
    if keep != lines:
        if len(keep) > 1:
            atomic_write_text(path, "".join(keep))
        else:
            path.unlink()


def tensorboard_writer(run_dir: Path, purge_step: Optional[int] = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return None
    # purge_step: on resume, events of epochs after last.pt are dropped (they are logged again).
    return SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=purge_step)


LOCK_NAME = ".imgcls.lock"


class RunLock:
    """An advisory lock on a run folder, held while a process trains or writes into it.

    The lock file holds the owner's pid and host. A second writer is refused in one sentence naming
    the holder; a lock whose process no longer exists on this host (killed) is stale and taken over.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    @staticmethod
    def _alive(pid: int) -> bool:
        import os
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True

    def acquire(self) -> "RunLock":
        import os
        import socket
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid_text, _, host = self.path.read_text().strip().partition(" ")
                    pid = int(pid_text)
                except (OSError, ValueError):
                    pid, host = -1, ""  # torn or unreadable: its writer died mid-write
                if pid == os.getpid() and host == socket.gethostname():
                    self.held = True  # already ours (re-entrant within one process)
                    return self
                if pid > 0 and (host != socket.gethostname() or self._alive(pid)):
                    raise UserError(f"run folder '{self.path.parent}' is in use by process {pid} on {host} "
                                    f"(lock file {self.path}); wait for it to finish or stop it, or delete the "
                                    "lock file if that process is gone.") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                raise UserError(f"cannot write into the run folder '{self.path.parent}' (permission denied); "
                                "make it writable or copy the run elsewhere.") from None
            except OSError as e:
                raise UserError(f"cannot write into the run folder '{self.path.parent}' ({e.strerror or e}); "
                                "make it writable or copy the run elsewhere.") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        raise UserError(f"could not take the lock {self.path}; another process keeps taking it.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
