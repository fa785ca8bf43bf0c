"""Write one benchmark's section into BENCHMARKS.md, replacing an older version of that section."""
from __future__ import annotations

import datetime
import re
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEach section is written by a script in `bench/`; rerun it to refresh the numbers.\n"


def write_section(title: str, body: str) -> None:
    text = PATH.read_text() if PATH.exists() else HEADER
    stamp = datetime.date.today().isoformat()
    section = f"## {title}\n\n_Measured {stamp}._\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda m: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    PATH.write_text(text)
    print(f"wrote '{title}' to {PATH}")
