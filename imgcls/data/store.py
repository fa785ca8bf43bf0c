"""The decoded image store (``data.cache``): every image decoded once into one uint8 array [N, C, H, W],
held pixel-interleaved (bytes in [N, H, W, C] order: a channels_last tensor), so a crop of a stored
image is already in the layout CPU resizing is fastest in (no copy per crop; see ``batchaug``).

Two kinds, one per side of the split:

* **eval**: each image exactly as the evaluation pipeline makes it (``ModelInfo.eval_transform``:
  resize to image_size / crop_pct, centre crop image_size), so cached validation equals uncached
  ``predict`` pixel for pixel.
* **train**: at the images' original size when they all share one size no larger than the stored
  side (then cached and uncached training batches are identical on the worker path), else resized
  so the short side is the stored side (``stored_side``: image_size / 0.875, timm's ratio) and
  centre-cropped square. Training crops are cut from the stored image, so a cached run sees the
  same distribution of crops, not the same pixels, as an uncached one.

Where it lives: ``memory`` (a tensor of the process; DataLoader workers forked later share its
pages, no per-worker copy) or ``disk`` (a memory-mapped file under ``$IMGCLS_CACHE``, default
``~/.cache/imgcls``, keyed by the file list with sizes and modification times, the kind, the decode
size and the channels; reused by later runs, and a different key when any of those change). A disk
store is written to a temporary name and renamed into place, then its ``.json`` record is written;
a file without its record, or whose size does not match it, is torn (killed while being written)
and is rebuilt, never read. Builders of the same key take a file lock, so a second process waits
and then maps what the first wrote. ``auto`` keeps sets up to ``MEMORY_LIMIT`` bytes (and a fifth of
the RAM) in memory and maps larger ones from disk.

Under torchrun, ``memory`` becomes one shared-memory segment per node: local rank 0 writes the store
in the disk format into ``/dev/shm`` (``shared_root``), the node's other processes map the same pages,
and the files are unlinked as soon as every process has mapped them (the pages live as long as the
mappings, so nothing is left behind). Where /dev/shm lacks the room, each process keeps its own copy.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..errors import UserError
from .buffers import BufferPool

FORMAT = 2                       # bump when the layout of a store changes (2: pixel-interleaved)
MEMORY_LIMIT = 4 << 30           # auto: at most this many bytes in memory
TRAIN_RATIO = 0.875              # stored side = image_size / TRAIN_RATIO (224 -> 256)


def cache_dir() -> Path:
    """$IMGCLS_CACHE, else $XDG_CACHE_HOME/imgcls, else ~/.cache/imgcls."""
    if os.environ.get("IMGCLS_CACHE"):
        return Path(os.environ["IMGCLS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgcls"


def stored_side(image_size: int) -> int:
    return int(math.ceil(image_size / TRAIN_RATIO))


@dataclass(frozen=True)
class StoreSpec:
    """How one side's images are decoded into the store."""
    kind: str                    # 'train' | 'eval'
    image_size: int
    crop_pct: float
    channels: int
    interpolation: str = "bilinear"  # the eval resize filter (the train side is always bilinear)

    def key_parts(self) -> dict:
        parts = {"format": FORMAT, "kind": self.kind, "image_size": self.image_size, "crop_pct": self.crop_pct,
                 "channels": self.channels}
        if self.interpolation != "bilinear":  # a bilinear store keeps the key it had before the filter was a choice
            parts["interpolation"] = self.interpolation
        return parts


class ImageStore:
    """uint8 images by index: ``store[i]`` -> [C, H, W], ``store.gather(idx)`` -> [N, C, H, W]
    (channels_last). ``shape`` is (N, C, H, W); the bytes are in [N, H, W, C] order."""

    def __init__(self, array, where: str, path: Optional[Path] = None):
        self._array = array          # [N, H, W, C] torch.Tensor (memory), or None until mapped (disk)
        self.where = where           # 'memory' | 'disk'
        self.path = path
        self.shape: tuple[int, ...] = _logical(array.shape) if array is not None else ()

    @classmethod
    def mapped(cls, path: Path, shape: Sequence[int]) -> "ImageStore":
        store = cls(None, "disk", path)
        store.shape = tuple(shape)
        return store

    def _pixels(self) -> torch.Tensor:
        """The array as stored, [N, H, W, C]."""
        if self._array is None:  # mapped lazily in each process (workers do not inherit a pickled copy)
            pixels = np.memmap(self.path, dtype=np.uint8, mode="r", shape=_physical(self.shape))
            with warnings.catch_warnings():  # read-only on purpose: nothing writes into a mapped store
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self._array = torch.from_numpy(pixels)
        return self._array

    def _tensor(self) -> torch.Tensor:
        return self._pixels().permute(0, 3, 1, 2)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.where == "disk":
            state["_array"] = None
        return state

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self._tensor()[i].contiguous()   # the worker path's transforms get a plain [C, H, W]

    def gather(self, index: torch.Tensor, pool: Optional[BufferPool] = None) -> torch.Tensor:
        """The images at ``index`` ([N, C, H, W], channels_last); with a ``pool``, into a reused CPU buffer."""
        t = self._pixels()
        if pool is None or t.device.type != "cpu":
            return t[index.to(t.device)].permute(0, 3, 1, 2)
        out = pool.empty((len(index), *t.shape[1:]), t.dtype)
        return torch.index_select(t, 0, index, out=out).permute(0, 3, 1, 2)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def to(self, device: torch.device) -> "ImageStore":
        """The whole store on ``device`` (the GPU path: batches are gathered where the model is)."""
        return ImageStore(self._pixels().to(device), self.where, self.path)


def _physical(shape: Sequence[int]) -> tuple[int, ...]:
    n, c, h, w = shape
    return n, h, w, c


def _logical(shape: Sequence[int]) -> tuple[int, ...]:
    n, h, w, c = shape
    return n, c, h, w


# ---------------------------------------------------------------- decoding

def _train_geometry(paths: Sequence[str], image_size: int) -> Optional[tuple[int, int]]:
    """(H, W) when every image has that one size and its short side fits the stored side, else None."""
    from PIL import Image
    side, seen = stored_side(image_size), set()
    for p in paths:
        with Image.open(p) as im:
            seen.add(im.size[::-1])
        if len(seen) > 1:
            return None
    (h, w), = seen
    return (h, w) if min(h, w) <= side else None


def _decoder(spec: StoreSpec, geometry: Optional[tuple[int, int]],
             eval_view: Optional[Callable]) -> tuple[Callable, tuple[int, int]]:
    """(image -> stored image, stored (H, W)); ``eval_view`` is the model record's eval transform."""
    from .transforms import store_resize
    if spec.kind == "eval":
        if eval_view is None:
            raise ValueError("an eval store needs the model record's eval transform (ModelInfo.eval_transform())")
        return eval_view, (spec.image_size, spec.image_size)
    if geometry is not None:
        return (lambda img: img), geometry
    side = stored_side(spec.image_size)
    return store_resize(side), (side, side)


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths, channels, fn):
        self.paths, self.channels, self.fn = list(paths), channels, fn

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from .decode import load_image
        return i, self.fn(load_image(self.paths[i], channels=self.channels))


def _fill(out: torch.Tensor, paths: Sequence[str], channels: int, fn: Callable, workers: int) -> None:
    """Decode every image into ``out`` ([N, C, H, W], any strides), ``workers`` processes decoding."""
    loader = torch.utils.data.DataLoader(_Decode(paths, channels, fn), batch_size=32, num_workers=workers,
                                         collate_fn=lambda items: items)
    for items in loader:
        for i, img in items:
            out[i] = img


def _key(paths: Sequence[str], spec: StoreSpec, geometry) -> str:
    files = []
    for p in paths:
        st = os.stat(p)
        files.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    blob = json.dumps({**spec.key_parts(), "geometry": geometry, "files": files}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: Path):
    """Exclusive while held: one process builds a store, others (readers too) wait, then map it.
    filelock uses flock on POSIX and the Windows lock there, so the cache works on both."""
    from filelock import FileLock
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):  # no timeout: wait as long as the build takes
        yield


def _valid_record(data: Path, record: Path, shape: Sequence[int]) -> bool:
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("complete") is True and list(meta.get("shape", [])) == list(shape)
            and data.is_file() and data.stat().st_size == int(np.prod(shape)))


def build_store(paths: Sequence[str], spec: StoreSpec, where: str, workers: int = 0,
                log: Callable[[str], None] = print, eval_view: Optional[Callable] = None,
                root: Optional[Path] = None) -> ImageStore:
    """The store of ``paths`` (``where``: memory | disk), decoded now or (disk) mapped from an earlier run.
    An eval store takes ``eval_view``, the model record's eval transform (``ModelInfo.eval_transform()``).
    ``root``: the folder of a disk store (default ``$IMGCLS_CACHE``; ``shared_root()`` under torchrun)."""
    geometry = _train_geometry(paths, spec.image_size) if spec.kind == "train" else None
    fn, (h, w) = _decoder(spec, geometry, eval_view)
    shape = (len(paths), spec.channels, h, w)
    if where == "memory":
        out = torch.empty(_physical(shape), dtype=torch.uint8)
        _fill(out.permute(0, 3, 1, 2), paths, spec.channels, fn, workers)
        return ImageStore(out, "memory")
    root = root or cache_dir()
    key = _key(paths, spec, geometry)
    data, record = root / f"{key}.u8", root / f"{key}.json"
    try:
        with _locked(root / f"{key}.lock"):
            if _valid_record(data, record, shape):
                log(f"cache: {spec.kind} images mapped from {data}")
                return ImageStore.mapped(data, shape)
            for stale in (data, record):  # torn or from another layout: never read, rebuilt
                stale.unlink(missing_ok=True)
            tmp = root / f"{key}.u8.tmp-{os.getpid()}"
            arr = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=_physical(shape))
            _fill(torch.from_numpy(arr).permute(0, 3, 1, 2), paths, spec.channels, fn, workers)
            arr.flush()
            del arr
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, data)
            from ..io import atomic_write_json
            atomic_write_json(record, {"complete": True, "shape": list(shape), "kind": spec.kind,
                                       "images": len(paths), "image_size": spec.image_size,
                                       "first": os.path.abspath(paths[0]) if paths else None,
                                       "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    except OSError as e:
        raise UserError(f"cannot write the image cache in '{root}' ({e.strerror or e}); set IMGCLS_CACHE to a "
                        "writable folder, or data.cache=memory or none.") from None
    return ImageStore.mapped(data, shape)


def shared_root(nbytes: int) -> Optional[Path]:
    """A node-local shared-memory folder with room for ``nbytes`` (and a margin), else None."""
    import shutil
    shm = Path("/dev/shm")
    try:
        if not shm.is_dir() or shutil.disk_usage(shm).free < nbytes * 1.1 + (64 << 20):
            return None
        root = shm / f"imgcls-{os.getuid()}"
        root.mkdir(mode=0o700, exist_ok=True)
        return root
    except OSError:
        return None


def unlink_store(store: ImageStore) -> None:
    """Remove a mapped store's files (its pages stay while a process maps them)."""
    if store.path is None:
        return
    for f in (store.path, store.path.with_suffix(".json"), store.path.with_suffix(".lock")):
        f.unlink(missing_ok=True)


def choose(setting: str, n_images: int, spec: StoreSpec) -> Optional[str]:
    """'memory' | 'disk' | None (no cache) for ``data.cache`` ``setting``; auto by the stored bytes."""
    if setting == "none":
        return None
    if setting != "auto":
        return setting
    side = stored_side(spec.image_size) if spec.kind == "train" else spec.image_size
    nbytes = n_images * spec.channels * side * side
    return "memory" if nbytes <= min(MEMORY_LIMIT, _ram() // 5) else "disk"


def _ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


# ---------------------------------------------------------------- imgcls cache list | clear

def list_cache() -> list[dict]:
    """Every store under cache_dir(): key, kind, images, shape, bytes, created, state (ok | torn)."""
    root = cache_dir()
    out = []
    if not root.is_dir():
        return out
    keys = sorted({p.name.split(".")[0] for p in root.iterdir() if p.suffix in (".u8", ".json") or ".tmp-" in p.name})
    for key in keys:
        data, record = root / f"{key}.u8", root / f"{key}.json"
        try:
            meta = json.loads(record.read_text())
        except (OSError, ValueError):
            meta = {}
        size = sum(p.stat().st_size for p in root.glob(f"{key}.u8*") if p.is_file())
        ok = bool(meta) and _valid_record(data, record, meta.get("shape", []))
        out.append({"key": key, "kind": meta.get("kind", "?"), "images": meta.get("images"),
                    "shape": meta.get("shape"), "bytes": size, "created": meta.get("created", ""),
                    "state": "ok" if ok else "torn"})
    return out


def clear_cache(keys: Optional[Sequence[str]] = None) -> tuple[int, int]:
    """Remove the named stores (all when ``keys`` is empty); returns (stores, bytes) freed."""
    root = cache_dir()
    entries = list_cache()
    if keys:
        unknown = sorted(set(keys) - {e["key"] for e in entries})
        if unknown:
            raise UserError(f"no cache entry '{unknown[0]}' in '{root}'; 'imgcls cache list' shows the keys.")
        entries = [e for e in entries if e["key"] in set(keys)]
    freed = 0
    for e in entries:
        with _locked(root / f"{e['key']}.lock"):  # not while a run is building it
            for p in root.glob(f"{e['key']}.*"):
                if p.suffix != ".lock":
                    freed += p.stat().st_size
                    p.unlink()
        (root / f"{e['key']}.lock").unlink(missing_ok=True)
    return len(entries), freed
