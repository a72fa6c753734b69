"""The command line as a user runs it: `tickcast ARGS` in a child process, output captured."""

from __future__ import annotations

import subprocess
import sys

from tests.support.live import ENV


def tickcast(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"tickcast {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
