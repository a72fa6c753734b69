"""The per-thread OpenBLAS limit around the LSTM's GEMMs."""

from __future__ import annotations

import pytest

from operators import blas


def test_limit_sets_this_threads_count_and_restores_it():
    with blas.limit(1):
        pass
    setter = blas._SETTER[0]
    if setter is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS with openblas_set_num_threads_local")
    before = setter(3)  # read the count in force (and set 3) ...
    setter(before)  # ... then put it back
    with blas.limit(1):
        inside = setter(1)
    after = setter(before)
    assert inside == 1
    assert after == before


def test_gemm_threads_default_and_override(monkeypatch):
    monkeypatch.delenv("TICKCAST_GEMM_THREADS", raising=False)
    assert blas.gemm_threads() == 1
    monkeypatch.setenv("TICKCAST_GEMM_THREADS", "0")
    assert blas.gemm_threads() is None
    monkeypatch.setenv("TICKCAST_GEMM_THREADS", "2")
    assert blas.gemm_threads() == 2
