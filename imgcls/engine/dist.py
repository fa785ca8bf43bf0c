"""The distributed context: world size, rank, sampler sharding, metric sync, rank-0 writes.

A process started by ``torchrun`` (``torch.distributed.run``) finds RANK, WORLD_SIZE and LOCAL_RANK in
its environment and joins the process group (``nccl`` on CUDA, ``gloo`` on the CPU); anything else is
the world of size 1, whose collectives are no-ops, so the single-process path runs the same code.
Gradients are synchronised by torch's DistributedDataParallel, not here: this module only carries
what the epoch loop must agree on across processes (stop, skip, losses, validation outputs).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..errors import UserError

DEFAULT_TIMEOUT = 300  # train.dist_timeout's default, seconds
PROGRESS_DIR_ENV = "IMGCLS_PROGRESS_DIR"  # set by the --nproc launcher: each rank's 'pid step timeout' file
PROGRESS_BYTES = 64    # fixed width, so that one pwrite replaces the whole record


def launched() -> bool:
    """Whether this process was started by torchrun as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class DistContext:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: Optional[str] = None   # None: not initialised (world 1)
    progress_fd: Optional[int] = None  # the --nproc launcher's progress file for this rank (see mark_step)
    timeout: float = DEFAULT_TIMEOUT   # seconds a collective waits for the other ranks

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, logs and reports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def own_log(self) -> bool:
        """Under ``imgcls --nproc``: this rank's output goes to RUN/logs/rank-N.log (rank 0's to the console)."""
        return self.progress_fd is not None

    def mark_step(self, step: int) -> None:
        """Tell the ``--nproc`` launcher that this rank finished optimizer step ``step`` (one small write
        at offset 0, no fsync): when a collective times out, the rank that stopped answering is named
        with the last step it finished. Nothing outside that launcher."""
        if self.progress_fd is not None:
            os.pwrite(self.progress_fd, f"{os.getpid()} {step} {self.timeout:g}".ljust(PROGRESS_BYTES).encode(), 0)

    # ------------------------------------------------------------ collectives (no-ops in a world of 1)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` as rank ``src`` has it, on every rank (pickled; for small things and last.pt)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def rank0_answer(self, ask: Optional[Callable[[], Any]]) -> Any:
        """``ask()`` as rank 0 answers it, on every rank: only rank 0 calls it, and every rank joins the
        collective whether or not it holds an ``ask`` (the ranks' callbacks differ: tracking lives on
        rank 0 alone). None where rank 0 has nothing to ask."""
        return self.broadcast_object(ask() if self.is_main and ask is not None else None)

    def gather_objects(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``t`` (a new tensor; ``t`` is left as it is)."""
        return self._reduce(t, "SUM")

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, "MAX")

    def _reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        if not self.active:
            return t
        t = t.clone()
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return t

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is True on at least one (one small all-reduce)."""
        if not self.active:
            return flag
        return bool(self.all_max(torch.tensor([int(flag)], device=device)).item())

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's ``module`` (batch-norm statistics and the EMA
        drift apart per rank; validation and checkpoints use rank 0's)."""
        if not self.active:
            return
        with torch.no_grad():
            for t in module.state_dict().values():
                if torch.is_tensor(t):
                    torch.distributed.broadcast(t, src=0)

    def close(self) -> None:
        if self.backend is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.backend = None
        if self.progress_fd is not None:
            os.close(self.progress_fd)
            self.progress_fd = None


def init_distributed(device_setting: str, timeout: float = DEFAULT_TIMEOUT) -> DistContext:
    """Join torchrun's process group when launched by it, else the world of size 1."""
    if not launched():
        return DistContext()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and not device_setting.startswith(("cpu", "mps"))
    if cuda:
        if device_setting.startswith("cuda:"):
            raise UserError(f"train.device={device_setting} names one GPU, but torchrun gives each process its own "
                            "(cuda:LOCAL_RANK); set train.device=cuda or auto.")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {rank} has LOCAL_RANK {local_rank}, but only {torch.cuda.device_count()} "
                            "GPU(s) are visible; start at most that many processes per node (--nproc).")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    ctx = DistContext(world, rank, local_rank, backend, _progress_fd(rank), float(timeout))
    ctx.mark_step(0)  # the pid, before any collective can hang
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout)))
    return ctx


def _progress_fd(rank: int) -> Optional[int]:
    where = os.environ.get(PROGRESS_DIR_ENV)
    return os.open(os.path.join(where, f"rank-{rank}"), os.O_WRONLY | os.O_CREAT, 0o644) if where else None


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """Each process's own GPU under torchrun (cuda:LOCAL_RANK); other devices as they are."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device
