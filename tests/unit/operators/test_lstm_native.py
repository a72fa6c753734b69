"""The compiled element-wise LSTM step against the NumPy path it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from operators import lstm_native
from operators.lstm import LSTMLayerWeights, LSTMWeights, RaggedLSTM

HIDDEN = 16


def _weights(layers: int, seed: int = 0) -> LSTMWeights:
    # Glorot-sized weights: with much larger ones the recurrence is chaotic and any two float32
    # evaluations drift apart over tens of steps, whatever the kernel.
    rng = np.random.default_rng(seed)
    lw = tuple(
        LSTMLayerWeights(rng.normal(0, 0.3, (5 if i == 0 else HIDDEN, 4 * HIDDEN)).astype(np.float32),
                         rng.normal(0, 0.3, (HIDDEN, 4 * HIDDEN)).astype(np.float32),
                         rng.normal(0, 0.5, 4 * HIDDEN).astype(np.float32))
        for i in range(layers))
    return LSTMWeights(lw, rng.normal(0, 1, HIDDEN).astype(np.float32), 0.1)


needs_native = pytest.mark.skipif(lstm_native.load() is None, reason="no C compiler: NumPy path only")


@needs_native
@pytest.mark.parametrize("layers", [1, 2])
def test_native_step_equals_numpy_step(layers):
    rng = np.random.default_rng(layers)
    lengths = rng.integers(1, 40, 1500)  # > one 1024-row block at the first steps
    t = int(lengths.sum())
    # Inputs up to +-30: the gates reach tanh's clamp (|u| > 7.9) and its linear region (|u| < 4e-4).
    x = (rng.standard_normal((t, 5)) * rng.choice([1e-5, 1.0, 30.0], (t, 1))).astype(np.float32)
    h0 = [rng.uniform(-1, 1, (len(lengths), HIDDEN)).astype(np.float32) for _ in range(layers)]
    c0 = [rng.normal(0, 5, (len(lengths), HIDDEN)).astype(np.float32) for _ in range(layers)]
    reset = rng.random(t) < 0.01
    native, numpy_only = RaggedLSTM(_weights(layers)), RaggedLSTM(_weights(layers), native=False)
    assert native.native and not numpy_only.native
    y1, h1, c1 = native.run(x, lengths, h0, c0, reset)
    y2, h2, c2 = numpy_only.run(x, lengths, h0, c0, reset)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=2e-6)
    for a, b in zip(h1 + c1, h2 + c2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


@needs_native
def test_native_tanh_is_close_to_exact_tanh_over_the_float_range():
    # One row whose i, f, o gates are pinned (f = 0, i = 1, o = 1 via huge pre-activations): then
    # c = tanh(g) and h = tanh(tanh(g)), so the row exposes the kernel's tanh at every g.
    u = np.concatenate([np.linspace(-12, 12, 4001), [0.0, 1e-7, -3e-4, 5e-4, 7.9, 8.0, 1e4, -1e4]]).astype(np.float32)
    n = len(u)
    z = np.zeros((n, 4), np.float32)
    z[:, 0], z[:, 1], z[:, 2], z[:, 3] = 1e4, -1e4, 1e4, u  # columns i, f, o (halved), g
    rec = np.zeros_like(z)
    h, c = np.zeros((n, 1), np.float32), np.ones((n, 1), np.float32)
    lstm_native.load()(z, rec, np.zeros(4, np.float32), h, c)
    np.testing.assert_allclose(c[:, 0], np.tanh(u.astype(np.float64)), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(h[:, 0], np.tanh(np.tanh(u.astype(np.float64))), rtol=2e-6, atol=1e-7)


@needs_native
def test_native_step_refuses_blocks_it_cannot_read():
    fn = lstm_native.load()
    z = np.zeros((4, 8), np.float32)
    h = np.zeros((4, 2), np.float32)
    b = np.zeros(8, np.float32)
    with pytest.raises(ValueError):
        fn(z.astype(np.float64), z, b, h, h.copy())
    with pytest.raises(ValueError):
        fn(z, z, b, np.zeros((8, 4), np.float32)[::2, :2], h.copy())
    with pytest.raises(ValueError):
        fn(z, z, b[:4], h, h.copy())


def test_the_native_kernel_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("TICKCAST_NATIVE_KERNEL", "0")
    assert lstm_native.load() is None
    assert not RaggedLSTM(_weights(1)).native


def test_a_failed_build_falls_back_to_numpy(monkeypatch, tmp_path):
    monkeypatch.setenv("TICKCAST_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(lstm_native, "_LOADED", {})
    assert lstm_native.load() is None
    assert not RaggedLSTM(_weights(1)).native


@needs_native
def test_native_gru_step_equals_numpy_gru_cell():
    """Keras' default GRU (reset_after, sigmoid/tanh) takes the compiled step; the NumPy cell is the reference."""
    from operators.layers import PerTick, Recurrent, Stack

    rng = np.random.default_rng(5)
    h = HIDDEN
    gru = Recurrent("gru", "gru", rng.normal(0, 0.3, (5, 3 * h)).astype(np.float32),
                    rng.normal(0, 0.3, (h, 3 * h)).astype(np.float32), rng.normal(0, 0.5, (2, 3 * h)).astype(np.float32))
    stack = Stack((gru, PerTick("dense", "d", rng.normal(0, 1, (h, 2)).astype(np.float32), None)), 5)
    lengths = rng.integers(1, 40, 1500)
    t = int(lengths.sum())
    x = (rng.standard_normal((t, 5)) * rng.choice([1e-5, 1.0, 30.0], (t, 1))).astype(np.float32)
    s0 = [rng.uniform(-1, 1, (len(lengths), h)).astype(np.float32)]
    reset = rng.random(t) < 0.01
    native, numpy_only = RaggedLSTM(stack), RaggedLSTM(stack, native=False)
    y1, s1 = native.step(x, lengths, s0, reset)
    y2, s2 = numpy_only.step(x, lengths, s0, reset)
    assert y1.shape == (t, 2)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(s1[0], s2[0], rtol=1e-5, atol=2e-6)
