"""The machine's limits for the operator's arithmetic, per case of ``tickcast bench operator``.

- the GEMM limit: one NumPy/BLAS GEMM of the LSTM's gates ``[x, h] @ W`` over all ticks of a batch, per
  layer, as if the batch had no time order at all, on one BLAS thread as the operator's GEMMs (two
  threads on a shared two-core machine made it slower, not faster, at 1 x 64);
- the schedule limit: the matrix products of the operator's own packed schedule for the same batches,
  alone, back to back in compiled code: per layer, the input projection ``x @ W_x`` over every tick, then
  for each step t of the packed layout (:class:`operators.lstm.Packing`, built from the batch's tick count
  per instrument) ``h[:a_t] @ W_h``; then the head ``out @ w``. No gates, no gather or scatter, no
  Python between products: a numba-compiled loop calling NumPy's own OpenBLAS (the BLAS the operator's
  ``np.matmul`` uses), on one BLAS thread as the operator's GEMMs. Each step takes the faster of one
  ``cblas_sgemm`` and a_t ``cblas_sgemv`` (the widest step width where the rows' GEMVs win is measured once
  per hidden size): OpenBLAS's GEMM packs W_h on every call, and at 1 x 64 a one-row GEMM costs several
  times a GEMV, which ONNX Runtime's LSTM does not pay. Where NumPy's BLAS does not export these symbols,
  numba's ``np.dot`` (SciPy's BLAS) does every product. A kernel that runs the recurrence step by step on
  the same BLAS cannot beat it, whatever it fuses.
"""

from __future__ import annotations

import time

import numpy as np

from operators.features import N_FEATURES
from operators.lstm import Packing

_COMPILED: list = []  # [(layer_products, description)]
_GEMV_ROWS: dict[int, int] = {}  # hidden -> widest step done as one GEMV per row


def measure_gemm_limit(batch_ticks: int, layers: int, hidden: int = 64, repeats: int = 7) -> float:
    """Rows/s of the gate GEMM [x, h] @ W over a batch's ticks, for every layer (best of ``repeats``)."""
    return batch_ticks / GemmLimit([[batch_ticks]], layers, hidden).seconds(0, repeats)


class GemmLimit:
    """The gate GEMM of every layer over each batch's ticks, ready to time round by round.

    ``rounds``: per round, the tick count of each of its batches."""

    def __init__(self, rounds: list[list[int]], layers: int, hidden: int):
        rng = np.random.default_rng(0)
        k0 = N_FEATURES + hidden
        self.ws = [rng.standard_normal((k0 if i == 0 else 2 * hidden, 4 * hidden), dtype=np.float32)
                   for i in range(layers)]
        sizes = sorted({t for ticks in rounds for t in ticks})
        self.xs = {t: [rng.standard_normal((t, w.shape[0]), dtype=np.float32) for w in self.ws] for t in sizes}
        self.outs = {t: np.empty((t, 4 * hidden), np.float32) for t in sizes}
        self.rounds = rounds
        self._run(rounds[0])

    def _run(self, ticks: list[int]) -> None:
        for t in ticks:
            for x, w in zip(self.xs[t], self.ws):
                np.matmul(x, w, out=self.outs[t])

    def seconds(self, round_index: int = 0, repeats: int = 3) -> float:
        """Seconds of one round's GEMMs: the best of ``repeats`` runs or more (see :func:`_best`)."""
        with _blas_one_thread():
            return _best(self._run, self.rounds[round_index], repeats)


def _numpy_blas():
    """NumPy's own BLAS ``cblas_sgemm`` and ``cblas_sgemv`` (the library the operator's ``np.matmul`` calls)
    as ctypes functions, and a description; None when NumPy's BLAS is not an OpenBLAS that exports them."""
    import ctypes  # noqa: PLC0415

    from threadpoolctl import threadpool_info  # noqa: PLC0415

    for info in threadpool_info():
        if info.get("user_api") != "blas" or "numpy" not in info.get("filepath", ""):
            continue
        lib = ctypes.CDLL(info["filepath"])
        for prefix, suffix, integer in (("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "64_", ctypes.c_int64),
                                        ("cblas_", "", ctypes.c_int)):
            gemm = getattr(lib, f"{prefix}sgemm{suffix}", None)
            gemv = getattr(lib, f"{prefix}sgemv{suffix}", None)
            if gemm is None or gemv is None:
                continue
            # pointers passed as size_t: the same register and width on every ABI numba targets
            ptr, enum, f32 = ctypes.c_size_t, ctypes.c_int, ctypes.c_float
            gemm.argtypes = [enum, enum, enum, integer, integer, integer, f32, ptr, integer, ptr, integer, f32, ptr,
                             integer]
            gemv.argtypes = [enum, enum, integer, integer, f32, ptr, integer, ptr, integer, f32, ptr, integer]
            gemm.restype = gemv.restype = None
            return gemm, gemv, f"{info['filepath'].rsplit('/', 1)[-1]} {prefix}sgemm{suffix}/{prefix}sgemv{suffix}"
    return None


def _schedule_products():
    """(the compiled loop of one layer's products, which BLAS it calls); built once per process (numba
    compiles on first call)."""
    if not _COMPILED:
        import numba  # noqa: PLC0415

        found = _numpy_blas()
        if found is not None:
            sgemm, sgemv, name = found

            @numba.njit(nogil=True)
            def layer_products(active, gemv_rows, x, wx, gates, h, wh, rec):  # pragma: no cover - compiled
                n, k = wx.shape[1], wx.shape[0]
                # row-major (101), no transposes (111): C (m, n) = A (m, k) @ B (k, n)
                sgemm(101, 111, 111, x.shape[0], n, k, 1.0, x.ctypes.data, k, wx.ctypes.data, n, 0.0,
                      gates.ctypes.data, n)
                hidden = wh.shape[0]
                hp, wp, rp = h.ctypes.data, wh.ctypes.data, rec.ctypes.data
                for t in range(active.shape[0]):
                    a = active[t]
                    if a <= gemv_rows:  # each row: rec[r] = W_h^T h[r] (row-major W_h, transposed: 112)
                        for r in range(a):
                            sgemv(101, 112, hidden, n, 1.0, wp, n, hp + 4 * hidden * r, 1, 0.0, rp + 4 * n * r, 1)
                    else:
                        sgemm(101, 111, 111, a, n, hidden, 1.0, hp, hidden, wp, n, 0.0, rp, n)
        else:
            name = "numba np.dot (SciPy's BLAS)"

            @numba.njit(nogil=True)
            def layer_products(active, gemv_rows, x, wx, gates, h, wh, rec):  # pragma: no cover - compiled
                np.dot(x, wx, gates)
                for t in range(active.shape[0]):
                    a = active[t]
                    np.dot(h[:a], wh, rec[:a])

        _COMPILED.append((layer_products, name))
    return _COMPILED[0]


def schedule_blas() -> str:
    """Which BLAS routines the schedule limit calls."""
    return _schedule_products()[1]


def _blas_one_thread():
    """Every loaded BLAS (NumPy's, and SciPy's that numba may call) on one thread, as the operator's GEMMs."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    return threadpool_limits(1, user_api="blas")


def gemv_rows(hidden: int, widest: int = 32, steps: int = 200, repeats: int = 5) -> int:
    """The widest step (at most ``widest`` rows) for which one GEMV per row beats one GEMM, measured once per
    hidden size (best of ``repeats`` for each width); 0 when a one-row GEMM is already the faster."""
    if hidden not in _GEMV_ROWS:
        products = _schedule_products()[0]
        rng = np.random.default_rng(0)
        wh = rng.standard_normal((hidden, 4 * hidden), dtype=np.float32)
        h = rng.standard_normal((widest, hidden), dtype=np.float32)
        rec = np.empty((widest, 4 * hidden), np.float32)
        x, wx, gates = np.zeros((1, 1), np.float32), np.zeros((1, 4 * hidden), np.float32), np.empty((1, 4 * hidden),
                                                                                                    np.float32)
        rows = 0
        with _blas_one_thread():
            for a in range(1, widest + 1):
                active = np.full(steps, a, np.int64)
                best = {}
                for mode, limit in (("gemv", a), ("gemm", 0)):
                    products(active, limit, x, wx, gates, h, wh, rec)
                    best[mode] = min(_timed(products, active, limit, x, wx, gates, h, wh, rec) for _ in range(repeats))
                if best["gemv"] >= best["gemm"]:
                    break
                rows = a
        _GEMV_ROWS[hidden] = rows
    return _GEMV_ROWS[hidden]


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _best(fn, arg, repeats: int, at_least: float = 0.05, at_most: int = 200) -> float:
    """The best time of ``fn(arg)`` over ``repeats`` runs, and more until ``at_least`` seconds have passed
    (at most ``at_most`` runs): a sub-millisecond limit timed a few times on a busy machine is as likely as
    not to include a preemption."""
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeats or (spent < at_least and runs < at_most):
        seconds = _timed(fn, arg)
        best, spent, runs = min(best, seconds), spent + seconds, runs + 1
    return best


class ScheduleLimit:
    """The packed schedule's products for given batches, ready to time round by round.

    ``rounds``: per round, the tick counts per instrument of each of its batches. Inputs of the first
    layer are the features, of the others the hidden state (the operator's widths)."""

    def __init__(self, rounds: list[list[np.ndarray]], layers: int, hidden: int):
        self.products = _schedule_products()[0]
        self.layers = layers
        self.gemv_rows = gemv_rows(hidden)
        rng = np.random.default_rng(0)
        self.wh = rng.standard_normal((hidden, 4 * hidden), dtype=np.float32)
        self.wd = rng.standard_normal((hidden, 1), dtype=np.float32)
        self.wx0 = rng.standard_normal((N_FEATURES, 4 * hidden), dtype=np.float32)
        self.wxn = rng.standard_normal((hidden, 4 * hidden), dtype=np.float32)
        self.plans = []
        for counts in rounds:
            plan = []
            for lengths in counts:
                t_total, g = int(np.sum(lengths)), len(lengths)
                plan.append((Packing.build(np.asarray(lengths, np.int64)).active.astype(np.int64),
                             rng.standard_normal((t_total, N_FEATURES), dtype=np.float32),
                             rng.standard_normal((t_total, hidden), dtype=np.float32),
                             np.empty((t_total, 4 * hidden), np.float32),
                             rng.standard_normal((g, hidden), dtype=np.float32),
                             np.empty((g, 4 * hidden), np.float32), np.empty((t_total, 1), np.float32)))
            self.plans.append(plan)
        with _blas_one_thread():
            for plan in self.plans:  # compile, and touch every buffer once
                self._run(plan)

    def _run(self, plan: list) -> None:
        for active, x, hidden_seq, gates, h, rec, y in plan:
            self.products(active, self.gemv_rows, x, self.wx0, gates, h, self.wh, rec)
            for _ in range(self.layers - 1):
                self.products(active, self.gemv_rows, hidden_seq, self.wxn, gates, h, self.wh, rec)
            np.dot(hidden_seq, self.wd, out=y)

    def seconds(self, round_index: int = 0, repeats: int = 3) -> float:
        """Seconds of one round's products: the best of ``repeats`` runs or more (see :func:`_best`)."""
        with _blas_one_thread():
            return _best(self._run, self.plans[round_index], repeats)


def schedule_seconds(counts: list[np.ndarray], layers: int, hidden: int, repeats: int = 5) -> float:
    """Seconds, best of ``repeats``, of the packed schedule's products for batches whose ticks per instrument
    are ``counts`` (one array per batch), every layer."""
    return ScheduleLimit([counts], layers, hidden).seconds(0, repeats)
