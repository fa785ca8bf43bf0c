"""imgcls audit: how well it finds injected label flips and copies, how long it takes, and the duplicate
search at 100,000 images (time and peak memory). Writes the "Audit" section of BENCHMARKS.md.

1. MNIST-5k (the demo's 5,000 digits, train and val together) with 5% of the labels flipped to another
   digit (seed 0; each file linked under its wrong class folder, nothing copied), plus a test folder of
   100 digits re-encoded as JPEG (quality 90): `imgcls audit configs/demo.yaml --folds 5 --test DIR`.
   Precision and recall of label_issues.csv against the flips; recall of the 100 copies in duplicates.csv.
2. 100,000 synthetic 32 px images (smooth random patterns) of which 1,000 have a JPEG re-encoded twin:
   pHash of every image in memory, then the chunked search; its time, peak traced memory (numpy's buffers
   included) and the recall of the twins.

    python bench/bench_audit.py [--skip-mnist] [--n 100000] [--folds 5] [--epochs 12]
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

FLIP_FRACTION = 0.05
LEAKS = 100


def flipped_mnist(out: Path, seed: int = 0) -> tuple[Path, Path, set[str], set[frozenset]]:
    from imgcls.data import demo_root
    src = Path(demo_root())
    files = sorted((p, p.parent.name) for side in ("train", "val") for p in (src / side).rglob("*.png"))
    rng = np.random.default_rng(seed)
    flip = set(rng.choice(len(files), int(FLIP_FRACTION * len(files)), replace=False).tolist())
    root, test = out / "digits", out / "test"
    flipped, pairs, dsts = set(), set(), []
    for i, (p, label) in enumerate(files):
        new = str((int(label) + rng.integers(1, 10)) % 10) if i in flip else label
        dst = root / new / f"{p.parent.parent.name}_{p.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(p, dst)
        dsts.append(os.path.abspath(dst))
        if i in flip:
            flipped.add(os.path.abspath(dst))
    test.mkdir()
    for k in rng.choice(len(files), LEAKS, replace=False).tolist():
        p = files[k][0]
        q = test / f"leak_{k}.jpg"
        Image.open(p).convert("L").save(q, "JPEG", quality=90)
        pairs.add(frozenset({dsts[k], str(q.resolve())}))
    return root, test, flipped, pairs


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mnist_rows(tmp: Path, folds: int, epochs: int) -> list[str]:
    import imgcls
    from imgcls.config import load_config
    root, test, flipped, pairs = flipped_mnist(tmp)
    cfg = load_config(str(Path(imgcls.__file__).parent / "configs" / "demo.yaml"),
                      [f"data.root={root}", f"run.dir={tmp / 'audit'}", "run.report=false", "train.progress=false",
                       f"train.epochs={epochs}"])
    t0 = time.perf_counter()
    from imgcls.api import audit
    out = audit(cfg, folds, test=str(test), log=lambda *a: None)
    wall = time.perf_counter() - t0
    flagged = {r["path"] for r in read(out / "label_issues.csv")}
    # the cv resolves data.root, so its paths are the links' absolute paths (symlinks are not followed)
    tp = len(flagged & flipped)
    dups = {frozenset({r["path_a"], r["path_b"]}) for r in read(out / "duplicates.csv")}
    found = sum(1 for p in pairs if p in dups)
    return [f"| MNIST-5k, {len(flipped)} of 5,000 labels flipped (5%), `configs/demo.yaml`, {folds} folds of {epochs} epochs | "
            f"flagged {len(flagged)}: precision {tp / max(len(flagged), 1):.3f}, recall {tp / len(flipped):.3f} | "
            f"{wall:.0f} s (cv + analysis) |",
            f"| the same audit's `--test`: {len(pairs)} digits re-encoded as JPEG q90 | "
            f"near-duplicate recall {found / len(pairs):.3f} ({found} of {len(pairs)}) | (included above) |"]


def synthetic(n: int, twins: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.normal(0, 1, (6, 6))
        low = ((low - low.min()) / (np.ptp(low) + 1e-9) * 255).astype(np.uint8)
        im = Image.fromarray(low).resize((32, 32), Image.BICUBIC)
        yield im
        if i < twins:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
            yield Image.open(io.BytesIO(buf.getvalue()))


def search_rows(n: int) -> list[str]:
    import imagehash
    from imgcls.data.dedup import PHASH_MAX_DISTANCE, near_pairs
    twins = 1000
    t0 = time.perf_counter()
    hashes = np.array([int.from_bytes(np.packbits(imagehash.phash(im).hash.flatten()).tobytes(), "big")
                       for im in synthetic(n - twins, twins)], dtype=np.uint64)
    t_hash = time.perf_counter() - t0
    tracemalloc.start()
    t0 = time.perf_counter()
    i, j, d = near_pairs(hashes, PHASH_MAX_DISTANCE)
    t_search = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    found = set(zip(i.tolist(), j.tolist()))
    # image k < twins is at index 2k, its twin at 2k + 1
    recall = sum((2 * k, 2 * k + 1) in found for k in range(twins)) / twins
    return [f"| {len(hashes):,} synthetic 32 px images, {twins:,} JPEG twins: pHash (imagehash, in memory) | "
            f"{len(hashes) / t_hash:,.0f} images/s | {t_hash:.0f} s |",
            f"| the same: chunked search, distance <= {PHASH_MAX_DISTANCE} | {len(found):,} pairs, twin recall "
            f"{recall:.3f}, peak traced memory {peak / 2**20:.0f} MiB (an N x N uint8 matrix: "
            f"{len(hashes) ** 2 / 2**30:.0f} GiB) | {t_search:.1f} s |"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-mnist", action="store_true", help="only the duplicate search: section 'Audit (duplicate search)'")
    ap.add_argument("--skip-search", action="store_true", help="only MNIST: section 'Audit'")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=12, help="train.epochs of each fold (the demo recipe: 12)")
    a = ap.parse_args()
    lines = ["| case | result | wall time |", "|---|---|---:|"]
    t0 = time.perf_counter()
    if not a.skip_mnist:
        with tempfile.TemporaryDirectory() as tmp:
            lines += mnist_rows(Path(tmp), a.folds, a.epochs)
    if not a.skip_search:
        lines += search_rows(a.n)
    cores = os.cpu_count()
    load = os.getloadavg()[0]
    body = (f"- command: `python bench/bench_audit.py {' '.join(sys.argv[1:])}` ({time.perf_counter() - t0:.0f} s)\n"
            f"- machine: {cores}-core CPU, no GPU; load average {load:.1f} from other processes at the end\n\n"
            + "\n".join(lines) + "\n\n"
            + ("" if a.skip_mnist else "Flagged: the rows of label_issues.csv (confident learning, pruning by noise "
               "rate, on the folds' out-of-fold probabilities). ")
            + ("" if a.skip_search else "The search never builds an N x N matrix: one chunk of rows (8M "
               "comparisons, 64 MB of XORs) at a time."))
    write_section("Audit (duplicate search)" if a.skip_mnist else "Audit", body)


if __name__ == "__main__":
    main()
