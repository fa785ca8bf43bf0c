"""Exact and near-duplicate images: content hashes, perceptual hashes, and a search that is never N x N.

* exact: the SHA-256 of the file's bytes; images are bucketed by it, so the cost is one pass.
* near: imagehash's pHash (64 bits: the signs of the lowest 8 x 8 DCT coefficients of a 32 x 32 grey
  image), compared by Hamming distance. The search XORs one chunk of hashes against the later ones and
  counts bits (``numpy.bitwise_count``), so memory is one chunk x N bytes whatever N is; pairs within
  ``max_distance`` bits are kept. imagehash is the optional extra ``audit`` (pip install imgcls[audit]).
* embedding: each fold model's pre-logits features, centred on their mean over the audited images and
  L2-normalised, side by side and divided by sqrt(models) (``unit_embeddings``), so the dot product of two
  rows is the mean over the fold models of the two images' cosine similarities. Centring matters: post-ReLU
  features are all positive, so raw cosines of distinct digits of one class sit at 0.97-0.999 and drown
  the copies (BENCHMARKS.md "Audit"). Pairs with (mean) cosine >= ``min_cosine`` are reported with their
  cosine distance ``1 - cosine`` and the threshold ``1 - min_cosine``. The search multiplies one chunk of
  rows by the later rows (a chunk x N matrix), like the pHash search.
"""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..errors import UserError
from ..io import file_sha256

# Hamming distance (bits of 64) up to which two pHashes are near-duplicates. A re-encoded, resized or
# slightly brightened copy stays within about 4 bits; different photos are ~32 apart.
PHASH_MAX_DISTANCE = 6
CHUNK_ELEMENTS = 1 << 23  # hashes compared per step: 8M x 8 bytes = 64 MB of XORs at a time
# Mean cosine similarity of the centred embeddings from which two images are near-duplicates. On MNIST-5k's
# fold models (2 folds of digits_cnn, 4 epochs): JPEG q90 copies >= 0.9993, the most similar distinct
# digits <= 0.993 (BENCHMARKS.md "Audit" has the 5-fold figures).
EMBEDDING_MIN_COSINE = 0.995
METHOD_ORDER = ("exact", "phash", "embedding")  # a pair found by several methods is reported by the first


def _imagehash():
    try:
        import imagehash
    except ImportError:
        raise UserError("near-duplicate search needs imagehash: pip install 'imgcls[audit]' (or pip install "
                        "imagehash).") from None
    return imagehash


def phash(path: str) -> Optional[int]:
    """The 64-bit pHash of an image file as an int, or None if it cannot be decoded."""
    from PIL import Image
    imagehash = _imagehash()
    try:
        with Image.open(path) as im:
            bits = imagehash.phash(im).hash.flatten()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phashes(paths: Sequence[str], workers: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hashes, bool ok) for ``paths``; decoding runs in threads (PIL releases the GIL)."""
    _imagehash()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        got = list(pool.map(phash, paths, chunksize=64))
    ok = np.array([h is not None for h in got], dtype=bool)
    return np.array([h or 0 for h in got], dtype=np.uint64), ok


def _upper_pairs(n: int, block, select, value_type, chunk_elements: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, value) of every pair i < j that ``select`` keeps, where ``block(start, stop)`` gives the values
    of rows start..stop against columns start..n: one chunk of rows at a time, never an N x N matrix."""
    rows = max(1, chunk_elements // max(n, 1))
    out_i, out_j, out_v = [], [], []
    for start in range(0, n, rows):
        values = block(start, min(n, start + rows))  # (rows, n - start)
        ii, jj = np.nonzero(select(values))
        keep = jj > ii  # column jj is image start + jj; row ii is image start + ii
        out_i.append(ii[keep] + start)
        out_j.append(jj[keep] + start)
        out_v.append(values[ii[keep], jj[keep]])
    cat = (lambda xs, t: np.concatenate(xs).astype(t) if xs else np.zeros(0, t))
    return cat(out_i, np.int64), cat(out_j, np.int64), cat(out_v, value_type)


def near_pairs(hashes: np.ndarray, max_distance: int = PHASH_MAX_DISTANCE,
               chunk_elements: int = CHUNK_ELEMENTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) of every pair i < j whose hashes differ in at most ``max_distance`` bits."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    return _upper_pairs(len(h), lambda a, b: np.bitwise_count(h[a:b, None] ^ h[None, a:]),
                        lambda d: d <= max_distance, np.int64, chunk_elements)


def unit_embeddings(features: Sequence[np.ndarray], center: bool = True) -> np.ndarray:
    """Per model (n, D_m) features -> (n, sum D_m) float32 rows whose dot products are the mean over the
    models of the cosine similarities of the (centred) features; a zero row stays zero."""
    blocks = []
    for f in features:
        f = np.asarray(f, dtype=np.float32)
        if center and len(f):
            f = f - f.mean(axis=0, keepdims=True)
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        blocks.append(f / np.where(norm > 0, norm, 1.0))
    return np.concatenate(blocks, axis=1) / np.float32(np.sqrt(max(len(blocks), 1)))


def cosine_pairs(vectors: np.ndarray, min_cosine: float = EMBEDDING_MIN_COSINE,
                 chunk_elements: int = CHUNK_ELEMENTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of every pair i < j of L2-normalised rows whose dot product is at least ``min_cosine``."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return _upper_pairs(len(v), lambda a, b: v[a:b] @ v[a:].T, lambda sim: sim >= min_cosine, np.float64,
                        chunk_elements)


def check_min_cosine(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise UserError(f"--min-cosine must be a cosine similarity between -1 and 1 (e.g. 0.995), got {value!r}.")
    return float(value)


def exact_groups(paths: Sequence[str], workers: int = 4) -> dict[str, list[int]]:
    """SHA-256 -> indices of the readable files with that content (every hash, singletons included)."""
    def digest(p):
        try:
            return file_sha256(p)
        except OSError:
            return None
    with ThreadPoolExecutor(max(1, workers)) as pool:
        digests = list(pool.map(digest, paths, chunksize=64))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        if d is not None:
            groups[d].append(i)
    return groups


@dataclass(frozen=True)
class Image:
    path: str
    label: str        # the given label as text ('' for an unlabelled test image)
    split: str        # train, val or test


@dataclass(frozen=True)
class Pair:
    a: Image
    b: Image
    distance: float   # Hamming bits of the pHash (int); 0 for exact copies; 1 - cosine for embeddings
    method: str       # exact, phash or embedding
    threshold: float  # the distance up to which this method reports a pair

    @property
    def across_splits(self) -> bool:
        return self.a.split != self.b.split

    @property
    def labels_differ(self) -> bool:
        return bool(self.a.label and self.b.label and self.a.label != self.b.label)


@dataclass(frozen=True)
class Embeddings:
    """The fold models' embeddings of some of the images: ``vectors[r]`` is ``images[index[r]]``'s."""
    vectors: np.ndarray   # (m, D) float32, rows L2-normalised
    index: np.ndarray     # (m,) int: positions in the image list
    min_cosine: float = EMBEDDING_MIN_COSINE


def find_duplicates(images: Sequence[Image], max_distance: int = PHASH_MAX_DISTANCE, near: bool = True,
                    workers: int = 4, embeddings: Optional[Embeddings] = None) -> list[Pair]:
    """Exact copies (same bytes), with ``near`` pHash near-duplicates, and with ``embeddings`` the pairs
    whose embeddings' cosine reaches its ``min_cosine``, each pair once (by the first of exact, phash,
    embedding that finds it); pairs with different labels first, then those across splits, then by
    method and distance."""
    paths = [im.path for im in images]
    pairs, seen = [], set()
    for members in exact_groups(paths, workers).values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                seen.add((i, j))
                pairs.append(Pair(images[i], images[j], 0, "exact", 0))
    if near:
        hashes, ok = phashes(paths, workers)
        idx = np.flatnonzero(ok)
        ii, jj, dd = near_pairs(hashes[idx], max_distance)
        for i, j, d in zip(idx[ii].tolist(), idx[jj].tolist(), dd.tolist()):
            if (i, j) not in seen:
                seen.add((i, j))
                pairs.append(Pair(images[i], images[j], int(d), "phash", max_distance))
    if embeddings is not None:
        ii, jj, cc = cosine_pairs(embeddings.vectors, embeddings.min_cosine)
        limit = round(1.0 - embeddings.min_cosine, 6)
        for i, j, c in zip(embeddings.index[ii].tolist(), embeddings.index[jj].tolist(), cc.tolist()):
            i, j = min(i, j), max(i, j)
            if (i, j) not in seen:
                pairs.append(Pair(images[i], images[j], max(0.0, round(1.0 - c, 6)), "embedding", limit))
    pairs.sort(key=lambda p: (not p.labels_differ, not p.across_splits, METHOD_ORDER.index(p.method), p.distance,
                              p.a.path, p.b.path))
    return pairs


DUPLICATE_COLUMNS = ["path_a", "path_b", "distance", "label_a", "label_b", "across_splits", "split_a", "split_b",
                     "method", "threshold"]


def duplicate_rows(pairs: Sequence[Pair]) -> list[list]:
    return [[p.a.path, p.b.path, p.distance, p.a.label, p.b.label, str(p.across_splits).lower(), p.a.split,
             p.b.split, p.method, p.threshold] for p in pairs]


def to_exclude(pairs: Sequence[Pair]) -> list[str]:
    """The training copy of each leak (a pair across splits), and the second image of each pair within
    one split; each path once, in the order of the pairs."""
    out: dict[str, None] = {}
    for p in pairs:
        if p.across_splits:
            for im in (p.a, p.b):
                if im.split == "train":
                    out[im.path] = None
        elif p.b.split != "test":  # a test image is not trained on; nothing to drop
            out[p.b.path] = None
    return list(out)
