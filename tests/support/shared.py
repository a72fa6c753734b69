"""Folders built once per test session and shared by pytest-xdist's workers."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def shared_folder(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder built once per test session by ``build(folder)``; with pytest-xdist the workers share the one
    the first of them builds (a file lock in the session's common folder) instead of building it once each."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-<user>/pytest-<n>/: common to this session's workers
    path, done = root / f"shared_{name}", root / f"shared_{name}.done"
    with open(root / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():  # written last: its presence means the folder is complete
            shutil.rmtree(path, ignore_errors=True)  # a build that failed half-way in another worker
            path.mkdir()
            build(path)
            done.touch()
    return path
