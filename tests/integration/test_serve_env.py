"""The serving environment built as deploy/Dockerfile builds it, and the compiled time loop in it.

A virtualenv from deploy/requirements-serve.lock, tickcast installed into it without its dependencies
from a copy of the sources the image copies, and children run with only that virtualenv on PATH (no C
compiler, as in the image): the compiled time loop is what steps the model, and a cache compiled in
advance (the image's build step) is used as it is, read-only, instead of compiling again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.no_tensorflow import ROOT

pytestmark = pytest.mark.slow

SERVE = """
import shutil, sys
assert shutil.which("cc") is None and shutil.which("gcc") is None, "a compiler is on PATH"
assert "tensorflow" not in sys.modules
from operators import compiled
from operators.bundle import load_bundle
from operators.forecaster import Forecaster
from pipeline.files.synthetic import generate_ticks
assert compiled.load() is not None, compiled.unavailable()
fc = Forecaster(load_bundle(sys.argv[1]))
assert fc.kernel.compiled, fc.kernel.why_not_compiled
res = fc.step(generate_ticks(5, 400, seed=3, bad_fraction=0.0))
assert len(res.rows) == 400
assert not {"tensorflow", "keras"} & set(sys.modules)
print("compiled", compiled.load().cached)
"""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-1500:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve-image")
    src = root / "src"  # what deploy/Dockerfile copies into its build stage
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("operators", "pipeline", "benchmarks"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check"]
    _run([*pip, "-r", str(ROOT / "deploy" / "requirements-serve.lock")])
    _run([*pip, str(src)])
    return venv


def _env(venv: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": str(venv / "bin"), "HOME": str(home), "LANG": "C.UTF-8", **extra}
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_the_serving_install_steps_the_model_with_the_compiled_loop_and_no_compiler(serve_venv, bundle, tmp_path):
    """As the image does: compile into a seed cache at build time (the first child); at start, with a
    read-only seed and an empty writable cache, the seed is copied and numba loads it as it is (it would
    rewrite its index files if it compiled again)."""
    lock = (ROOT / "deploy" / "requirements-serve.lock").read_text().lower()
    assert "\nnumba==" in lock and "\ntensorflow" not in lock
    python = str(serve_venv / "bin" / "python")
    seed = tmp_path / "seed"
    done = _run([python, "-c", SERVE, str(bundle.path)],
                env=_env(serve_venv, tmp_path / "h1", NUMBA_CACHE_DIR=str(seed)), cwd=tmp_path)
    assert done.stdout.split() == ["compiled", "True"]
    made = _files(seed)
    assert any(name.endswith(".nbi") for name in made) and any(name.endswith(".nbc") for name in made), made
    for p in [seed, *seed.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)  # a read-only image layer
    try:
        cache = tmp_path / "cache"
        done = _run([python, "-c", SERVE, str(bundle.path)],
                    env=_env(serve_venv, tmp_path / "h2", TICKCAST_KERNEL_CACHE=str(cache),
                             TICKCAST_KERNEL_CACHE_SEED=str(seed)), cwd=tmp_path)
        assert done.stdout.split() == ["compiled", "True"]
        assert _files(cache / "numba") == made, "the seeded cache was rewritten: the loops were compiled again"
        assert _files(seed) == made
    finally:
        for p in [seed, *seed.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
