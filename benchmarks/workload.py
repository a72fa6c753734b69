"""The operator benchmarks' workload: a model bundle of a given size, and streams of micro-batches.

Shared by ``tickcast bench operator`` and its peers (:mod:`benchmarks.peers`, :mod:`benchmarks.onnx_peer`),
the profile and the end-to-end benchmarks, so every one of them measures the same model on the same ticks.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from operators.bundle import Bundle, weights_from_keras
from operators.features import N_FEATURES, FeatureSpec, Normalisation
from operators.state import StateShape
from operators.training import build_keras_model

HIDDEN = 64
T0 = 1_767_225_600_000_000_000


def bench_bundle(layers: int, hidden: int = HIDDEN, seed: int | None = None) -> Bundle:
    """A built-in stacked LSTM + Dense(1) bundle with Keras' initial weights, seeded by ``seed`` (default:
    ``layers``). Another seed gives a model of the same shape with other weights and its own model version."""
    model = build_keras_model(N_FEATURES, layers, hidden, seed=layers if seed is None else seed)
    norm = Normalisation(np.zeros(N_FEATURES), np.ones(N_FEATURES), 0.0, 1e-3)
    version = f"bench-{layers}x{hidden}" + ("" if seed is None else f"-seed{seed}")
    return Bundle(None, version, FeatureSpec(), norm, 10, StateShape(layers, hidden),
                  weights_from_keras(model, layers), {}, model)


def tick_batches(n_instruments: int, activity: str, n_batches: int, batch_ticks: int, seed: int = 0) -> list[pa.Table]:
    """``n_batches`` micro-batches of ``batch_ticks`` clean ticks; each tick's instrument drawn uniformly
    (``uniform``) or Zipf-skewed with s = 1.1 (``zipf``: a few instruments take most ticks, as in bursts)."""
    rng = np.random.default_rng(seed)
    names = np.array([f"I{i:07d}" for i in range(n_instruments)])
    if activity == "zipf":
        w = 1.0 / np.arange(1, n_instruments + 1) ** 1.1
        p = w / w.sum()
    else:
        p = None
    batches = []
    ts = T0
    for _ in range(n_batches):
        inst = rng.choice(n_instruments, size=batch_ticks, p=p)
        price = 100.0 * np.exp(rng.normal(0, 1e-3, batch_ticks))
        t = ts + np.arange(batch_ticks, dtype=np.int64) * 1000
        ts = int(t[-1]) + 1000
        batches.append(pa.table({
            "instrument": pa.array(names[inst]),
            "ts": pa.array(t, pa.int64()),
            "price": pa.array(price),
            "size": pa.array(rng.integers(1, 1000, batch_ticks).astype(np.float64)),
        }))
    return batches


def warm_table(n_instruments: int) -> pa.Table:
    """One tick per instrument, a second before the stream: every instrument has a row and a history."""
    names = [f"I{i:07d}" for i in range(n_instruments)]
    return pa.table({
        "instrument": pa.array(names),
        "ts": pa.array(np.full(n_instruments, T0 - 1_000_000_000), pa.int64()),
        "price": pa.array(np.full(n_instruments, 100.0)),
        "size": pa.array(np.ones(n_instruments)),
    })


def tick_counts(batch: pa.Table) -> np.ndarray:
    """Ticks per instrument in one micro-batch (what the operator's packed schedule is built from)."""
    return pc.value_counts(batch.column("instrument")).field("counts").to_numpy().astype(np.int64)
