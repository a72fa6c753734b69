"""How many threads OpenBLAS may use for the LSTM's GEMMs, set for the calling thread only.

The ragged LSTM issues many small GEMMs per micro-batch (one per row block per
step, hundreds or thousands of them when one instrument has hundreds of ticks).
OpenBLAS splits each over its thread pool and then waits for every thread; on
a machine whose other cores are busy (a shared host, the pipeline's own
consumer and producer threads) each wait can last a scheduler tick, and a batch
of 1,000 small steps took a second instead of 20 ms. A single thread per GEMM
is as fast when the machine is idle and does not have that cliff.

OpenBLAS 0.3.27+ exports ``openblas_set_num_threads_local``, which changes
the count for the calling thread alone and returns the previous one, so other
threads of the process (and other libraries) are unaffected. Where the BLAS
is not OpenBLAS, or too old, :func:`limit` does nothing.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator

_SETTER: list = []  # [callable or None], resolved once


def _find_setter():
    try:
        with open("/proc/self/maps") as f:
            paths = {parts[-1] for parts in map(str.split, f) if len(parts) >= 6 and "openblas" in parts[-1].lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    return None


def gemm_threads() -> int | None:
    """Threads for the operator's GEMMs: ``TICKCAST_GEMM_THREADS`` (0: leave OpenBLAS's default), default 1."""
    value = int(os.environ.get("TICKCAST_GEMM_THREADS", "1"))
    return value if value > 0 else None


@contextmanager
def limit(threads: int | None) -> Iterator[None]:
    """Within the block, OpenBLAS calls from this thread use at most ``threads`` threads (None: unchanged)."""
    if threads is None:
        yield
        return
    if not _SETTER:
        import numpy  # noqa: F401, PLC0415 - numpy's OpenBLAS must be loaded before it is looked up

        _SETTER.append(_find_setter())
    setter = _SETTER[0]
    if setter is None:
        yield
        return
    previous = setter(threads)
    try:
        yield
    finally:
        setter(previous)
