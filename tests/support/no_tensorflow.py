"""Child processes as the serving install runs them: TensorFlow and Keras are not importable.

``env_without_tensorflow(folder)`` writes a ``sitecustomize.py`` into ``folder`` and returns an environment
that puts it first on PYTHONPATH: every Python child started with it puts a finder first on
``sys.meta_path`` that answers ``tensorflow``, ``keras`` and their submodules with the ModuleNotFoundError
an install without them raises (deploy/requirements-serve.lock), whatever this virtualenv holds.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.live import ENV

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("tensorflow", "keras")

SITECUSTOMIZE = f'''import sys


class _NotInstalled:
    """{", ".join(BLOCKED)}: not installed, as in the serving install."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
'''


def env_without_tensorflow(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}
