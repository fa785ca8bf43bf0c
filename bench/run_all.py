"""Run every benchmark in bench/ (each writes its own section of BENCHMARKS.md)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script, args in (("bench_train_demo.py", ["--repeats", "3"]), ("bench_predict.py", [])):
    print(f"== {script} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)
