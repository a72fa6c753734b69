"""Real ``.keras`` files and edits of them: the HDF5 weights rewritten with h5py, the config as JSON, the
zip rebuilt (so every member's CRC is right and only the edited contents are odd)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WEIGHTS = "model.weights.h5"
CONFIG = "config.json"
ROOT = Path(__file__).resolve().parents[2]


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rezip(parts: dict[str, bytes], out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return out


def edit_weights(src: Path, out: Path, edit) -> Path:
    """``src`` with its weights opened by h5py in r+ mode and passed to ``edit(file)``."""
    parts = members(src)
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / WEIGHTS
        h5.write_bytes(parts[WEIGHTS])
        import h5py  # noqa: PLC0415

        with h5py.File(h5, "r+") as f:
            edit(f)
        parts[WEIGHTS] = h5.read_bytes()
    return rezip(parts, out)


def edit_config(src: Path, out: Path, edit) -> Path:
    """``src`` with ``edit(config_dict)`` applied to its config.json."""
    parts = members(src)
    config = json.loads(parts[CONFIG])
    edit(config)
    parts[CONFIG] = json.dumps(config).encode()
    return rezip(parts, out)


def keras_weights(paths: list[Path], timeout: float = 300.0) -> list[dict[str, list[np.ndarray]] | str]:
    """Each file loaded by Keras itself (safe mode), in a child process (a file may crash libhdf5): per file,
    ``{layer name: its get_weights()}``, or the one-line reason Keras refused it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        script = (
            "import os, sys, json, numpy as np\n"
            "os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3'); os.environ.setdefault('KERAS_BACKEND', 'tensorflow')\n"
            "import keras\n"
            "arrays, verdicts = {}, []\n"
            "for i, path in enumerate(sys.argv[2:]):\n"
            "    try:\n"
            "        model = keras.saving.load_model(path, compile=False, safe_mode=True)\n"
            "    except Exception as exc:\n"
            "        verdicts.append(' '.join(str(exc).split())[:300] or type(exc).__name__); continue\n"
            "    names = []\n"
            "    for layer in model.layers:\n"
            "        names.append([layer.name, len(layer.get_weights())])\n"
            "        for j, w in enumerate(layer.get_weights()):\n"
            "            arrays[f'{i}/{layer.name}/{j}'] = np.asarray(w)\n"
            "    verdicts.append(names)\n"
            "np.savez(sys.argv[1], verdicts=np.array([json.dumps(v) for v in verdicts]), **arrays)\n"
        )
        env = os.environ | {"TF_ENABLE_ONEDNN_OPTS": "0"}
        subprocess.run([sys.executable, "-c", script, str(out), *map(str, paths)], check=True, timeout=timeout,
                       env=env, cwd=ROOT, capture_output=True)
        with np.load(out, allow_pickle=False) as npz:
            results: list = []
            for i, text in enumerate(npz["verdicts"]):
                verdict = json.loads(str(text))
                if isinstance(verdict, str):
                    results.append(verdict)
                else:
                    results.append({name: [npz[f"{i}/{name}/{j}"] for j in range(n)] for name, n in verdict})
            return results


def h5_bytes(build) -> bytes:
    """An HDF5 file written by ``build(file)`` (h5py), as bytes."""
    import h5py  # noqa: PLC0415

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    return buf.getvalue()


def replace_dataset(f, where: str, **kwargs) -> None:
    """The dataset ``where`` recreated with the same shape and dtype unless given, and ``kwargs`` (h5py's)."""
    old = f[where]
    shape, dtype = old.shape, old.dtype
    group, name = where.rsplit("/", 1)
    del f[where]
    f[group].create_dataset(name, shape=kwargs.pop("shape", shape), dtype=kwargs.pop("dtype", dtype), **kwargs)
