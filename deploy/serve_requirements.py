"""Print tickcast's runtime requirements without the training-only ones (TensorFlow, Keras).

    python deploy/serve_requirements.py > serve.in

Used by `make lock-serve`, which installs these under the pins of deploy/requirements.lock
(`pip install -c deploy/requirements.lock -r serve.in`) and freezes the result into
deploy/requirements-serve.lock: the serving image then carries exactly the versions of the full
image, minus TensorFlow, Keras and what only they need.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# Serving reads model.keras as data (operators/keras_file.py); only training and loading a model
# through the Keras engine import these.
TRAINING_ONLY = {"tensorflow", "tensorflow-cpu", "keras"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def serve_requirements(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [d for d in deps if _name(d) not in TRAINING_ONLY]


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    sys.stdout.write("".join(f"{r}\n" for r in serve_requirements(root / "pyproject.toml")))
