"""SIGTERM / Ctrl-C during training: finish the current step, save last.pt, exit 143 / 130."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional


class StopFlag:
    """SIGTERM / Ctrl-C: finish the current step, save last.pt, exit 143 / 130."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


class TrainingInterrupted(Exception):
    def __init__(self, run_dir: Path, signum: int, nproc: int = 1):
        self.run_dir, self.signum = run_dir, signum
        self.exit_code = 130 if signum == signal.SIGINT else 143
        super().__init__(f"stopped by signal {signum}; last.pt saved. Resume with: "
                         f"imgcls train --resume {run_dir}" + (f" --nproc {nproc}" if nproc > 1 else ""))
