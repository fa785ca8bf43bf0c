"""The micro-batcher: decoded images wait in one queue; a single loop gathers up to ``max_batch_size`` of
them (or what arrived within ``timeout_s`` of the first), runs ONE forward in its own thread, and hands each
waiting request its row. Decoding happens before an image enters the queue, so the forward never waits on
it and a bad image never reaches a batch.

A request that stops waiting (its client disconnected, or it passed --timeout-s) cancels its futures; the loop
drops a cancelled image when it meets it in the queue, so an abandoned image never reaches a forward."""
from __future__ import annotations

import asyncio
import time
from collections import deque
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
    each batch's size and ``on_drop(n)`` the number of cancelled images dropped unforwarded (the metrics)."""

    def __init__(self, forward: Callable[[list[torch.Tensor]], torch.Tensor], max_batch_size: int,
                 timeout_s: float, max_queue: int, on_batch: Optional[Callable[[int], None]] = None,
                 on_drop: Optional[Callable[[int], None]] = None):
        self.forward, self.max_batch_size, self.timeout_s = forward, max_batch_size, timeout_s
        self.max_queue = max_queue
        self.on_batch, self.on_drop = on_batch or (lambda n: None), on_drop or (lambda n: None)
        # a deque rather than an asyncio.Queue: depth can skip the cancelled images still in it
        self.waiting: deque[_Item] = deque()
        self.arrived: Optional[asyncio.Event] = None
        self.task: Optional[asyncio.Task] = None
        # one thread: forwards run one after another, off the event loop
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgcls-forward")

    def start(self) -> None:
        self.arrived = asyncio.Event()
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
        """Images waiting for a batch, not counting those whose request was abandoned."""
        return sum(1 for it in self.waiting if not it.future.done())

    async def submit(self, views: list[torch.Tensor]) -> torch.Tensor:
        """This image's row of the forward of the batch it lands in. Cancelling the caller cancels the
        image's future, and the loop then drops the image unforwarded."""
        depth = self.depth
        if depth >= self.max_queue:
            raise QueueFull(f"{depth} images are already waiting (--max-queue {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(_Item(views, future))
        self.arrived.set()
        return await future

    def _pop_live(self) -> Optional[_Item]:
        """The oldest image still wanted; the abandoned ones in front of it are dropped and counted."""
        while self.waiting:
            it = self.waiting.popleft()
            if not it.future.done():
                return it
            self.on_drop(1)
        return None

    async def _next(self, timeout_s: Optional[float]) -> Optional[_Item]:
        """The next wanted image, waiting up to ``timeout_s`` (None: for ever) for one to arrive."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            it = self._pop_live()
            if it is not None:
                return it
            self.arrived.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                return self._pop_live()

    async def _gather(self) -> list[_Item]:
        batch = [await self._next(None)]
        deadline = time.monotonic() + self.timeout_s
        while len(batch) < self.max_batch_size:
            it = await self._next(max(0.0, deadline - time.monotonic()))
            if it is None:
                break
            batch.append(it)
        # a request abandoned while its batch was being gathered is not computed either
        live = [it for it in batch if not it.future.done()]
        if len(live) < len(batch):
            self.on_drop(len(batch) - len(live))
        return live

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
