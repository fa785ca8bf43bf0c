"""Run every benchmark in bench/, one after another (each writes its own section of BENCHMARKS.md).
`make bench` runs this; set TIMM_TRAIN to pytorch-image-models' train.py for the timm rows."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = (
    ("bench_train_demo.py", ["--repeats", "3"]),
    ("bench_predict.py", []),
    ("bench_loop.py", ["5"]),
    ("bench_cache.py", ["2", "2"]),
    ("bench_e2e.py", ["--repeats", "3", "--write"]),
    ("bench_pipeline.py", ["--repeats", "3", "--write"]),
    ("bench_memory.py", ["--repeats", "2", "--write"]),
    ("bench_vs_timm.py", ["--seeds", "0", "1", "2", "--write"]),
    ("bench_ddp.py", ["--repeats", "3", "--write"]),
    ("bench_finetune.py", ["--seeds", "2", "--epochs", "8", "--pretrain-epochs", "2"]),
    ("bench_audit.py", []),  # MNIST-5k with 5% flips, 5 folds, then the 100k-image duplicate search
)

for script, args in RUNS:
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)
