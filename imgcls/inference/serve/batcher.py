"""The micro-batcher: decoded images wait in one queue; a single loop gathers up to ``max_batch_size`` of
them (or what arrived within ``timeout_s`` of the first), runs ONE forward in its own thread, and hands each
waiting request its row. Decoding happens before an image enters the queue, so the forward never waits on
it and a bad image never reaches a batch."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import torch


class QueueFull(Exception):
    """More images are waiting than ``max_queue``: the caller answers 503 with Retry-After."""


@dataclass
class _Item:
    views: list[torch.Tensor]   # one uint8 [C,S,S] image per predictor view
    future: asyncio.Future


class MicroBatcher:
    """``forward(views)`` takes uint8 batches (one per view) and returns [N, K] rows; ``on_batch(n)`` is told
    each batch's size (the metrics)."""

    def __init__(self, forward: Callable[[list[torch.Tensor]], torch.Tensor], max_batch_size: int,
                 timeout_s: float, max_queue: int, on_batch: Optional[Callable[[int], None]] = None):
        self.forward, self.max_batch_size, self.timeout_s = forward, max_batch_size, timeout_s
        self.max_queue, self.on_batch = max_queue, on_batch or (lambda n: None)
        self.queue: Optional[asyncio.Queue] = None
        self.task: Optional[asyncio.Task] = None
        # one thread: forwards run one after another, off the event loop
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgcls-forward")

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pool.shutdown(wait=True)

    @property
    def depth(self) -> int:
        return self.queue.qsize() if self.queue is not None else 0

    async def submit(self, views: list[torch.Tensor]) -> torch.Tensor:
        """This image's row of the forward of the batch it lands in."""
        if self.depth >= self.max_queue:
            raise QueueFull(f"{self.depth} images are already waiting (--max-queue {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(_Item(views, future))
        return await future

    async def _gather(self) -> list[_Item]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.timeout_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        # a request that timed out or whose client left is not computed
        return [it for it in batch if not it.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            views = [torch.stack([it.views[k] for it in batch]) for k in range(len(batch[0].views))]
            try:
                rows = await loop.run_in_executor(self.pool, self.forward, views)
            except Exception as e:  # the forward failed for the whole batch: every request in it hears why
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(e)
                continue
            self.on_batch(len(batch))
            for it, row in zip(batch, rows):
                if not it.future.done():
                    it.future.set_result(row)
