"""`tickcast bench startup`: how long a serving process takes to be ready, and its memory, by bundle loader.

A serving process (``tickcast run``, a restart after a crash, a new member of
the group) imports the runtime, loads the bundle and builds the operator
before it polls. Two loaders, each in fresh child processes, interleaved
(the machine's noise hits both alike), median of ``repeats``:
- ``file``: tickcast's loader (``operators.keras_file``: the .keras file read as
  JSON + HDF5; no Keras, no TensorFlow);
- ``keras``: what a Keras user writes, ``keras.saving.load_model`` in safe mode
  (TensorFlow backend), then the same operator.
Each child steps one tick, so everything serving needs has been imported.
Wall time from spawn to exit; peak RSS as the child reports it (VmHWM).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import pyarrow as pa
import pipeline.live.runner  # the live runtime, as `tickcast run` imports it
from operators.forecaster import Forecaster
from operators.bundle import load_bundle
fc = Forecaster(load_bundle({path!r}, with_keras={with_keras}))
fc.step(pa.table({{"instrument": ["A"], "ts": [1_767_225_600_000_000_000], "price": [100.0], "size": [1.0]}}))
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def saved_bundle(directory: Path, layers: int, hidden: int) -> Path:
    import numpy as np  # noqa: PLC0415

    from operators.features import FeatureSpec, Normalisation  # noqa: PLC0415
    from operators.bundle import Bundle, _version_hash, save_bundle, weights_from_keras  # noqa: PLC0415
    from operators.training import build_keras_model  # noqa: PLC0415
    from operators.state import StateShape  # noqa: PLC0415

    n = len(FeatureSpec().names)
    model = build_keras_model(n, layers, hidden, seed=1)
    norm = Normalisation(np.zeros(n), np.ones(n), 0.0, 1.0)
    draft = Bundle(None, "", FeatureSpec(), norm, 10, StateShape(layers, hidden), weights_from_keras(model, layers),
                   {}, model)
    bundle = Bundle(None, _version_hash(draft.weights, draft.meta()), FeatureSpec(), norm, 10,
                    StateShape(layers, hidden), draft.weights, {}, model)
    return save_bundle(bundle, directory / f"bundle_{layers}x{hidden}")


def _child(path: Path, with_keras: bool) -> tuple[float, float]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(path=str(path), with_keras=with_keras)], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"child failed: {done.stderr[-1000:]}")
    return elapsed, int(done.stdout.split()[-1]) / 1024  # VmHWM: the child's peak resident set, kB


def run(repeats: int = 5, shapes=((1, 64), (2, 128))) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="tickcast-bench-startup-") as tmp:
        for layers, hidden in shapes:
            path = saved_bundle(Path(tmp), layers, hidden)
            samples = {"file": [], "keras": []}
            for i in range(repeats):
                for loader in (("file", "keras") if i % 2 == 0 else ("keras", "file")):
                    samples[loader].append(_child(path, loader == "keras"))
            row = {}
            for loader, got in samples.items():
                row[loader] = {"seconds": statistics.median(s for s, _ in got),
                               "rss_mb": statistics.median(m for _, m in got)}
            results[f"{layers}x{hidden}"] = row
    print(f"{'bundle':>8} {'loader':>6} {'ready (s)':>10} {'peak RSS (MB)':>14}")
    for shape, row in results.items():
        for loader, fig in row.items():
            print(f"{shape:>8} {loader:>6} {fig['seconds']:>10.2f} {fig['rss_mb']:>14.0f}")
        print(f"{shape:>8}  keras/file: {row['keras']['seconds'] / row['file']['seconds']:.1f}x time, "
              f"{row['keras']['rss_mb'] / row['file']['rss_mb']:.1f}x memory")
    return {"repeats": repeats, "results": results}
