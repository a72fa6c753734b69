"""The machine's limits for the operator's arithmetic, per case of ``tickcast bench operator``.

- the GEMM limit: one NumPy/BLAS GEMM of the LSTM's gates ``[x, h] @ W`` over all ticks of a batch, per
  layer, as if the batch had no time order at all;
- the schedule limit: the matrix products of the operator's own packed schedule for the same batches,
  alone, back to back in compiled code: per layer, the input projection ``x @ W_x`` over every tick, then
  for each step t of the packed layout (:class:`operators.lstm.Packing`, built from the batch's tick count
  per instrument) ``h[:a_t] @ W_h``; then the head ``out @ w``. No gates, no gather or scatter, no
  Python between products: a numba-compiled loop calling ``cblas_sgemm`` of NumPy's own OpenBLAS (the
  BLAS the operator's ``np.matmul`` uses; numba's ``np.dot`` on contiguous float32 slices, through SciPy's
  BLAS, where that symbol is not found), on one BLAS thread as the operator's GEMMs. A kernel that runs the
  recurrence step by step on the same BLAS cannot beat it, whatever it fuses.
"""

from __future__ import annotations

import time

import numpy as np

from operators.features import N_FEATURES
from operators.lstm import Packing

_COMPILED: list = []


def measure_gemm_limit(batch_ticks: int, layers: int, hidden: int = 64, repeats: int = 7) -> float:
    """Rows/s of the gate GEMM [x, h] @ W over a batch's ticks, for every layer."""
    rng = np.random.default_rng(0)
    k0 = N_FEATURES + hidden
    xs = [rng.standard_normal((batch_ticks, k0 if i == 0 else 2 * hidden), dtype=np.float32) for i in range(layers)]
    ws = [rng.standard_normal((x.shape[1], 4 * hidden), dtype=np.float32) for x in xs]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for x, w in zip(xs, ws):
            x @ w
        best = min(best, time.perf_counter() - started)
    return batch_ticks / best


def _numpy_sgemm():
    """NumPy's own BLAS ``cblas_sgemm`` (the one the operator's ``np.matmul`` calls) as a ctypes function,
    with the width of its integers; None when NumPy's BLAS is not an OpenBLAS that exports it."""
    import ctypes  # noqa: PLC0415

    from threadpoolctl import threadpool_info  # noqa: PLC0415

    for info in threadpool_info():
        if info.get("user_api") != "blas" or "numpy" not in info.get("filepath", ""):
            continue
        lib = ctypes.CDLL(info["filepath"])
        for name, integer in (("scipy_cblas_sgemm64_", ctypes.c_int64), ("cblas_sgemm64_", ctypes.c_int64),
                              ("cblas_sgemm", ctypes.c_int)):
            fn = getattr(lib, name, None)
            if fn is None:
                continue
            # pointers passed as size_t: the same register and width on every ABI numba targets
            ptr = ctypes.c_size_t
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, ctypes.c_float,
                           ptr, integer, ptr, integer, ctypes.c_float, ptr, integer]
            fn.restype = None
            return fn, f"{info['filepath'].rsplit('/', 1)[-1]} {name}"
    return None


def _schedule_products():
    """(the compiled loop of one layer's products, which BLAS it calls); built once per process (numba
    compiles on first call). It calls NumPy's own ``cblas_sgemm`` where it can be found (the operator's
    BLAS: another build of OpenBLAS can be twice as slow on the narrow products), else numba's ``np.dot``
    (SciPy's BLAS)."""
    if not _COMPILED:
        import numba  # noqa: PLC0415

        found = _numpy_sgemm()
        if found is not None:
            sgemm, name = found

            @numba.njit(nogil=True)
            def layer_products(active, x, wx, gates, h, wh, rec):  # pragma: no cover - compiled
                n, k = wx.shape[1], wx.shape[0]
                # row-major (101), no transposes (111): C (m, n) = A (m, k) @ B (k, n)
                sgemm(101, 111, 111, x.shape[0], n, k, 1.0, x.ctypes.data, k, wx.ctypes.data, n, 0.0,
                      gates.ctypes.data, n)
                hidden = wh.shape[0]
                hp, wp, rp = h.ctypes.data, wh.ctypes.data, rec.ctypes.data
                for t in range(active.shape[0]):
                    sgemm(101, 111, 111, active[t], n, hidden, 1.0, hp, hidden, wp, n, 0.0, rp, n)
        else:
            name = "numba np.dot (SciPy's BLAS)"

            @numba.njit(nogil=True)
            def layer_products(active, x, wx, gates, h, wh, rec):  # pragma: no cover - compiled
                np.dot(x, wx, gates)
                for t in range(active.shape[0]):
                    a = active[t]
                    np.dot(h[:a], wh, rec[:a])

        _COMPILED.append((layer_products, name))
    return _COMPILED[0]


def schedule_blas() -> str:
    """Which BLAS routine the schedule limit calls."""
    return _schedule_products()[1]


def _blas_one_thread():
    """Every loaded BLAS (NumPy's, and SciPy's that numba may call) on one thread, as the operator's GEMMs."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    return threadpool_limits(1, user_api="blas")


def schedule_seconds(counts: list[np.ndarray], layers: int, hidden: int, repeats: int = 5) -> float:
    """Seconds, best of ``repeats``, of the packed schedule's matrix products for batches whose ticks per
    instrument are ``counts`` (one array per batch), every layer; inputs of the first layer are the
    features, of the others the hidden state (the same widths as the operator's; extra layers take the
    hidden width for the projection as the operator's do)."""
    products = _schedule_products()[0]
    rng = np.random.default_rng(0)
    wh = rng.standard_normal((hidden, 4 * hidden), dtype=np.float32)
    wd = rng.standard_normal((hidden, 1), dtype=np.float32)
    wx0 = rng.standard_normal((N_FEATURES, 4 * hidden), dtype=np.float32)
    wxn = rng.standard_normal((hidden, 4 * hidden), dtype=np.float32)
    plans = []
    for lengths in counts:
        pk = Packing.build(np.asarray(lengths, np.int64))
        t_total, g = int(np.sum(lengths)), len(lengths)
        plans.append((pk.active.astype(np.int64), rng.standard_normal((t_total, N_FEATURES), dtype=np.float32),
                      rng.standard_normal((t_total, hidden), dtype=np.float32),
                      np.empty((t_total, 4 * hidden), np.float32), rng.standard_normal((g, hidden), dtype=np.float32),
                      np.empty((g, 4 * hidden), np.float32), np.empty((t_total, 1), np.float32)))
    with _blas_one_thread():
        total = 0.0
        for active, x, hidden_seq, gates, h, rec, y in plans:
            products(active, x, wx0, gates, h, wh, rec)  # compile / warm
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                products(active, x, wx0, gates, h, wh, rec)
                for _ in range(layers - 1):
                    products(active, hidden_seq, wxn, gates, h, wh, rec)
                np.dot(hidden_seq, wd, out=y)
                best = min(best, time.perf_counter() - started)
            total += best
    return total
