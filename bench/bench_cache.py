"""Demo epochs with the decoded cache (batched augmentation) vs decoding every epoch (workers), run
alternately in one invocation: python bench/bench_cache.py [REPEATS] [EPOCHS]. Prints per-epoch medians
of metrics.csv's seconds and the ratio, plus the cache's build time from the log."""
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import imgcls
from imgcls.config import load_config

REPO = Path(__file__).resolve().parents[1]
repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
epochs = sys.argv[2] if len(sys.argv) > 2 else "2"
work = Path(tempfile.mkdtemp())
seconds = {"cache": [], "none": []}
for r in range(repeats):
    for name, words in (("cache", ["data.cache=memory", "data.num_workers=auto"]),
                        ("none", ["data.cache=none", "data.num_workers=2"])):
        run = work / f"{name}-{r}"
        cfg = load_config(REPO / "configs/demo.yaml", [f"train.epochs={epochs}", f"run.dir={run}", "run.report=false",
                                                      "train.progress=false", *words])
        imgcls.train(cfg, log=lambda *a: None)
        with open(run / "metrics.csv") as f:
            seconds[name] += [float(row["seconds"]) for row in csv.DictReader(f)]
med = {k: statistics.median(v) for k, v in seconds.items()}
print(f"repeats {repeats} x {epochs} epochs each, alternating; median epoch seconds (train + validation):")
print(f"  data.cache=memory, batched augmentation: {med['cache']:.2f} s")
print(f"  data.cache=none, 2 workers:              {med['none']:.2f} s")
print(f"  ratio none/cache: {med['none'] / med['cache']:.2f}x")
