"""Batch-sized CPU tensors handed out again once nothing else holds them.

Why: a batch of 64 x 3 x 224 x 224 float32 is 38.5 MB, above glibc's mmap threshold (32 MiB at
most), so every fresh one is new pages from the kernel, and first touching them (page faults) cost
more than the work written into them. Measured on the 2-core CI machine (bench/bench_pipeline.py's
shapes): uint8 -> normalised float32 of that batch took 15 ms into a fresh tensor against 5 ms into
a reused one. CUDA has its own caching allocator; this is for CPU tensors only.

A buffer is reused only when nothing else refers to it: no other Python name, no view or numpy
array over its storage, no autograd graph or DLPack capsule holding it (``_unshared``). A batch that
the caller keeps (a list of batches, a saved graph) is therefore never overwritten; a new buffer is
made instead. Where those counts are not available (another torch), nothing is reused.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

import torch

_MIN_BYTES = 1 << 20          # smaller tensors come from malloc's heap, which reuses its pages anyway
_PER_SHAPE, _SHAPES = 2, 4    # the loop holds one batch while the next is made: 2 per shape suffice


def _unshared(t: torch.Tensor) -> bool:
    """Whether only the pool refers to ``t``: Python references (the pool's list, the caller's loop
    name, this argument, getrefcount's), C++ holders of the tensor (autograd, DLPack) and holders of
    its storage (views, numpy); and not made a leaf of autograd by someone (``requires_grad_``)."""
    try:
        return (not t.requires_grad and sys.getrefcount(t) <= 4 and t._use_count() == 1
                and torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2)
    except (AttributeError, RuntimeError):
        return False


class BufferPool:
    """``pool.empty(shape, dtype, memory_format)``: like ``torch.empty`` on the CPU, but a tensor
    from an earlier call is returned again when nobody holds it any more. Its contents are stale:
    callers overwrite every element."""

    def __init__(self):
        self._bufs: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()

    def empty(self, shape, dtype: torch.dtype, memory_format=torch.contiguous_format) -> torch.Tensor:
        shape = tuple(shape)
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if nbytes < _MIN_BYTES:
            return torch.empty(shape, dtype=dtype, memory_format=memory_format)
        key = (shape, dtype, memory_format)
        bufs = self._bufs.setdefault(key, [])
        self._bufs.move_to_end(key)
        for b in bufs:
            if _unshared(b):
                return b
        b = torch.empty(shape, dtype=dtype, memory_format=memory_format)
        if len(bufs) < _PER_SHAPE:
            bufs.append(b)
        while len(self._bufs) > _SHAPES:   # an odd last batch's shape does not stay forever
            self._bufs.popitem(last=False)
        return b

    def __getstate__(self):  # buffers are not worth pickling into a worker
        return {"_bufs": OrderedDict()}
