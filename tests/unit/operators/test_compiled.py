"""The compiled time loop (operators.compiled) against the NumPy path, the reference it replaces."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from operators import compiled
from operators.layers import PerTick, Recurrent, Stack
from operators.lstm import LSTMLayerWeights, LSTMWeights, RaggedLSTM

HIDDEN = 16
needs_compiled = pytest.mark.skipif(compiled.load() is None, reason=f"compiled loop unavailable: "
                                    f"{compiled.unavailable()}")


def _weights(layers: int, seed: int = 0, hidden: int = HIDDEN) -> LSTMWeights:
    # Glorot-sized weights: with much larger ones the recurrence is chaotic and any two float32
    # evaluations drift apart over tens of steps, whatever the kernel.
    rng = np.random.default_rng(seed)
    lw = tuple(
        LSTMLayerWeights(rng.normal(0, 0.3, (5 if i == 0 else hidden, 4 * hidden)).astype(np.float32),
                         rng.normal(0, 0.3, (hidden, 4 * hidden)).astype(np.float32),
                         rng.normal(0, 0.5, 4 * hidden).astype(np.float32))
        for i in range(layers))
    return LSTMWeights(lw, rng.normal(0, 1, hidden).astype(np.float32), 0.1)


def _batch(seed: int, groups: int = 300, longest: int = 40, features: int = 5):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, longest, groups)  # any order: not longest first
    t = int(lengths.sum())
    # Inputs up to +-30: the gates reach tanh's clamp (|u| > 7.9) and its linear region (|u| < 4e-4).
    x = (rng.standard_normal((t, features)) * rng.choice([1e-5, 1.0, 30.0], (t, 1))).astype(np.float32)
    reset = rng.random(t) < 0.01
    return rng, lengths, x, reset


def _assert_same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)


@needs_compiled
@pytest.mark.parametrize("layers,hidden", [(1, HIDDEN), (2, HIDDEN), (1, 7)])  # 7: not a multiple of four
def test_compiled_lstm_equals_numpy(layers, hidden):
    rng, lengths, x, reset = _batch(layers + hidden)
    h0 = [rng.uniform(-1, 1, (len(lengths), hidden)).astype(np.float32) for _ in range(layers)]
    c0 = [rng.normal(0, 5, (len(lengths), hidden)).astype(np.float32) for _ in range(layers)]
    fast, reference = RaggedLSTM(_weights(layers, hidden=hidden)), RaggedLSTM(_weights(layers, hidden=hidden),
                                                                            compiled_loop=False)
    assert fast.compiled and not reference.compiled
    y1, h1, c1 = fast.run(x, lengths, h0, c0, reset)
    y2, h2, c2 = reference.run(x, lengths, h0, c0, reset)
    _assert_same(y1, y2)
    for a, b in zip(h1 + c1, h2 + c2):
        _assert_same(a, b)


def _gru(rng, n_in: int, h: int) -> Recurrent:
    return Recurrent("gru", "gru", rng.normal(0, 0.3, (n_in, 3 * h)).astype(np.float32),
                     rng.normal(0, 0.3, (h, 3 * h)).astype(np.float32), rng.normal(0, 0.5, (2, 3 * h)).astype(np.float32))


@needs_compiled
def test_compiled_stack_of_gru_rnn_lstm_and_per_tick_layers_equals_numpy():
    """GRU, SimpleRNN and LSTM with per-tick layers before, between and after them, resets, in place."""
    rng, lengths, x, reset = _batch(5)
    h = HIDDEN
    rnn = Recurrent("rnn", "rnn", rng.normal(0, 0.3, (h, h)).astype(np.float32),
                    rng.normal(0, 0.3, (h, h)).astype(np.float32), None)
    lw = _weights(1, seed=3).layers[0]
    lstm = Recurrent("lstm", "lstm", rng.normal(0, 0.3, (h, 4 * h)).astype(np.float32), lw.recurrent, lw.bias)
    stack = Stack((PerTick("dense", "pre", rng.normal(0, 0.5, (5, 5)).astype(np.float32), None, "relu"),
                   _gru(rng, 5, h), PerTick("layer_norm", "ln", epsilon=1e-3), rnn, PerTick("identity", "drop"),
                   lstm, PerTick("dense", "head", rng.normal(0, 1, (h, 3)).astype(np.float32),
                                 np.zeros(3, np.float32))), 5)
    s0 = [rng.uniform(-1, 1, (len(lengths), w)).astype(np.float32) for _, w in stack.state_vectors]
    fast, reference = RaggedLSTM(stack), RaggedLSTM(stack, compiled_loop=False)
    assert fast.compiled
    y2, s2 = reference.step(x, lengths, [a.copy() for a in s0], reset)
    mine = [a.copy() for a in s0]
    y1, s1 = fast.step(x, lengths, mine, reset, in_place=True)
    assert y1.shape == (len(x), 3)
    _assert_same(y1, y2)
    for a, b in zip(s1, s2):
        _assert_same(a, b)


@needs_compiled
@pytest.mark.parametrize("hidden", [16, 7])
def test_a_groups_numbers_do_not_depend_on_who_shares_its_steps(hidden):
    """The loop steps rows four at a time or one at a time; a group's outputs and state are the same to
    the bit whichever, so the loop's blocking never makes a number depend on the batch's other groups.
    (The BLAS input projection and head around it are held to float32 rounding, as in the design.)"""
    rng = np.random.default_rng(hidden)
    groups = 7
    lengths = rng.integers(1, 30, groups)
    t = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    order = np.argsort(-lengths, kind="stable").astype(np.int64)
    xw = rng.normal(0, 2, (t, 4 * hidden)).astype(np.float32)
    b = rng.normal(0, 0.5, 4 * hidden).astype(np.float32)
    wh = rng.normal(0, 0.3, (hidden, 4 * hidden)).astype(np.float32)
    reset = rng.random(t) < 0.05
    h0 = rng.uniform(-1, 1, (groups, hidden)).astype(np.float32)
    c0 = rng.normal(0, 1, (groups, hidden)).astype(np.float32)
    loop = compiled.load().lstm
    eye = np.eye(4 * hidden, dtype=np.float32)  # x @ I: the loop's input projection passes xw through

    def run(lens, st, xs, rs, h, c):
        lens = np.asarray(lens, np.int64)
        ordr = np.argsort(-lens, kind="stable").astype(np.int64)
        active = (len(lens) - np.cumsum(np.bincount(lens, minlength=lens.max() + 1))[: lens.max()]).astype(np.int64)
        out = np.zeros((len(xs), hidden), np.float32)
        loop(xs, eye, b, st, ordr, active, rs, h, c, wh, out)
        return out

    h_all, c_all = h0.copy(), c0.copy()
    out_all = run(lengths, starts, xw, reset, h_all, c_all)
    assert len(order) == groups
    for g in range(groups):
        ticks = slice(starts[g], starts[g] + lengths[g])
        h, c = h0[g : g + 1].copy(), c0[g : g + 1].copy()
        out = run(lengths[g : g + 1], np.zeros(1, np.int64), np.ascontiguousarray(xw[ticks]),
                  np.ascontiguousarray(reset[ticks]), h, c)
        assert np.array_equal(out, out_all[ticks])
        assert np.array_equal(h[0], h_all[g]) and np.array_equal(c[0], c_all[g])


@needs_compiled
def test_compiled_tanh_is_close_to_exact_tanh_over_the_float_range():
    # One row per value, whose i, f, o gates are pinned (f = 0, i = 1, o = 1 via huge pre-activations):
    # then c = tanh(g) and h = tanh(tanh(g)), so the rows expose the loop's tanh at every g.
    # NaN must stay NaN (a model whose outputs go NaN is caught downstream; a tanh that made it 1 would hide it)
    u = np.concatenate([np.linspace(-12, 12, 4001), [0.0, 1e-7, -3e-4, 5e-4, 7.9, 8.0, 1e4, -1e4, np.nan]]).astype(
        np.float32)
    n = len(u)
    xw = np.zeros((n, 4), np.float32)
    xw[:, 0], xw[:, 1], xw[:, 2], xw[:, 3] = 1e4, -1e4, 1e4, u  # columns i, f, o (halved), g
    h, c, out = np.zeros((n, 1), np.float32), np.ones((n, 1), np.float32), np.zeros((n, 1), np.float32)
    idx = np.arange(n, dtype=np.int64)
    compiled.load().lstm(xw, np.eye(4, dtype=np.float32), np.zeros(4, np.float32), idx, idx, np.array([n], np.int64), np.zeros(n, np.bool_),
                         h, c, np.zeros((1, 4), np.float32), out)
    np.testing.assert_allclose(c[:, 0], np.tanh(u.astype(np.float64)), rtol=2e-6, atol=1e-7)  # NaN stays NaN
    np.testing.assert_allclose(h[:, 0], np.tanh(np.tanh(u.astype(np.float64))), rtol=2e-6, atol=1e-7)
    assert np.array_equal(out, h, equal_nan=True)


def test_the_compiled_loop_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(compiled, "_STATE", {})
    monkeypatch.setenv("TICKCAST_NATIVE_KERNEL", "0")
    model = RaggedLSTM(_weights(1))
    assert not model.compiled and model.why_not_compiled == "TICKCAST_NATIVE_KERNEL=0"


def test_without_numba_the_numpy_path_serves_and_says_why(monkeypatch):
    monkeypatch.setattr(compiled, "_STATE", {})
    monkeypatch.delitem(sys.modules, "operators._loops", raising=False)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba -> ImportError
    model = RaggedLSTM(_weights(1))
    assert not model.compiled and "numba is not installed" in model.why_not_compiled
    rng, lengths, x, reset = _batch(1, groups=20)
    y, h, c = model.run(x, lengths, [np.zeros((20, HIDDEN), np.float32)], [np.zeros((20, HIDDEN), np.float32)], reset)
    assert y.shape == (len(x),) and np.isfinite(y).all()


def test_a_layer_without_a_compiled_loop_takes_the_numpy_path_for_the_whole_stack():
    rng = np.random.default_rng(0)
    lstm = Recurrent("lstm", "lstm", rng.normal(0, 0.3, (5, 4 * HIDDEN)).astype(np.float32),
                     rng.normal(0, 0.3, (HIDDEN, 4 * HIDDEN)).astype(np.float32), None, activation="relu")
    model = RaggedLSTM(Stack((lstm,), 5))
    assert not model.compiled
    if compiled.load() is not None:
        assert "relu" in model.why_not_compiled


@needs_compiled
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_deal_the_instruments_and_change_no_number(monkeypatch, threads):
    """TICKCAST_LOOP_THREADS: the batch's instruments dealt over threads give the same outputs and states
    to the bit as one thread, for a GRU, SimpleRNN and LSTM stack with resets."""
    rng, lengths, x, reset = _batch(11, groups=41, longest=60)
    h = HIDDEN
    rnn = Recurrent("rnn", "rnn", rng.normal(0, 0.3, (h, h)).astype(np.float32),
                    rng.normal(0, 0.3, (h, h)).astype(np.float32), None)
    lw = _weights(1, seed=4).layers[0]
    lstm = Recurrent("lstm", "lstm", rng.normal(0, 0.3, (h, 4 * h)).astype(np.float32), lw.recurrent, lw.bias)
    stack = Stack((_gru(rng, 5, h), rnn, lstm, PerTick("dense", "head", rng.normal(0, 1, (h, 2)).astype(np.float32),
                                                       None)), 5)
    s0 = [rng.uniform(-1, 1, (len(lengths), w)).astype(np.float32) for _, w in stack.state_vectors]
    assert len(x) >= 512  # threads are used from 512 ticks on
    y1, s1 = RaggedLSTM(stack).step(x, lengths, s0, reset)
    monkeypatch.setenv("TICKCAST_LOOP_THREADS", str(threads))
    many = RaggedLSTM(stack)
    y2, s2 = many.step(x, lengths, s0, reset)
    assert many._pool is not None, "the pool was used"
    assert np.array_equal(y1, y2)
    assert all(np.array_equal(a, b) for a, b in zip(s1, s2))


@pytest.mark.parametrize("value", ["0", "65", "two", ""])
def test_a_bad_thread_count_is_one_line(monkeypatch, value):
    monkeypatch.setenv("TICKCAST_LOOP_THREADS", value)
    from operators.errors import TickcastError

    with pytest.raises(TickcastError, match="^TICKCAST_LOOP_THREADS=.* is not a whole number of threads from 1 to 64$"):
        RaggedLSTM(_weights(1))


def test_a_bad_thread_count_ends_a_command_with_one_line_and_exit_2(monkeypatch, tmp_path, capsys, bundle):
    from pipeline.cli import main
    from pipeline.files.sinks import write_parquet
    from pipeline.files.synthetic import generate_ticks

    write_parquet(generate_ticks(3, 300, seed=1), tmp_path / "t.parquet")
    monkeypatch.setenv("TICKCAST_LOOP_THREADS", "two")
    code = main(["backtest", "--input", str(tmp_path / "t.parquet"), "--model", str(bundle.path), "--out",
                 str(tmp_path / "bt"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["tickcast: error: TICKCAST_LOOP_THREADS='two' is not a whole number of threads from 1 to 64"]
