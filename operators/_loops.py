"""The numba source of :mod:`operators.compiled` (imported only when the kernels are built).

Every layer loop has the same arguments:
    x (T, F) float32     the layer's input at every tick, ticks group after group
    wx (F, G*H)          input kernel (its product is formed in the loop: no (T, G*H) temporary)
    b (G*H,)             the bias (LSTM; GRU: the input bias; SimpleRNN), same columns as wx
    starts (N,) int64    first tick of each group in xw/out
    order (N,) int64     the groups, longest first (packed row r is group order[r])
    active (L,) int64    groups still stepping at step t (a prefix of order)
    reset (T,) bool      zero the group's state before this tick
    state rows (N, H)    float32, updated in place (h, and c for an LSTM)
    wh (H, G*H)          recurrent kernel
    out (T, H)           h after every tick
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

# The products (_rec1, _rec4) are compiled without "contract": a fused multiply-add would let the
# compiler round a row's sums differently in the four-row and one-row paths. The element-wise code
# (gates, tanh) is the same code for every row, so it may fuse. "nsz"/"arcp" change no finite result here.
_FLAGS = {"nsz", "arcp"}
_OPTS = {"fastmath": _FLAGS, "error_model": "numpy", "boundscheck": False}
_FUSED = {"fastmath": _FLAGS | {"contract"}, "error_model": "numpy", "boundscheck": False}


@njit(**_OPTS)  # unfused: Eigen's coefficients are for separate rounding (its clamp then gives exactly 1)
def _tanh(x):
    """Eigen's generic_fast_tanh_float: a 13/6 rational approximation, clamped (branch-free: vectorises)."""
    clamp = np.float32(7.90531110763549805)
    xc = clamp if x > clamp else x  # in this form a NaN stays NaN (it fails both comparisons)
    xc = -clamp if xc < -clamp else xc
    x2 = xc * xc
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * xc
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    r = p / q
    return x if abs(x) < np.float32(0.0004) else r


@njit(**_OPTS)  # not inlined by numba: compiled (and kept) with its own flags, inlined by LLVM
def _rec1(hq, wh, a):
    """a = hq @ wh for one row, four inputs at a time (the same sums, in the same order, as :func:`_rec4`)."""
    hidden, width = wh.shape
    for j in range(width):
        a[j] = 0.0
    k = 0
    while k + 4 <= hidden:
        w0, w1, w2, w3 = wh[k], wh[k + 1], wh[k + 2], wh[k + 3]
        x0, x1, x2, x3 = hq[k], hq[k + 1], hq[k + 2], hq[k + 3]
        for j in range(width):
            a[j] += x0 * w0[j] + x1 * w1[j] + x2 * w2[j] + x3 * w3[j]
        k += 4
    while k < hidden:
        w0, x0 = wh[k], hq[k]
        for j in range(width):
            a[j] += x0 * w0[j]
        k += 1


@njit(**_OPTS)
def _rec4(h0, h1, h2, h3, wh, a0, a1, a2, a3):
    """:func:`_rec1` for four rows at once: each weight row is loaded once for the four."""
    hidden, width = wh.shape
    for j in range(width):
        a0[j] = 0.0
        a1[j] = 0.0
        a2[j] = 0.0
        a3[j] = 0.0
    k = 0
    while k + 4 <= hidden:
        w0, w1, w2, w3 = wh[k], wh[k + 1], wh[k + 2], wh[k + 3]
        x00, x01, x02, x03 = h0[k], h0[k + 1], h0[k + 2], h0[k + 3]
        x10, x11, x12, x13 = h1[k], h1[k + 1], h1[k + 2], h1[k + 3]
        x20, x21, x22, x23 = h2[k], h2[k + 1], h2[k + 2], h2[k + 3]
        x30, x31, x32, x33 = h3[k], h3[k + 1], h3[k + 2], h3[k + 3]
        for j in range(width):
            u0, u1, u2, u3 = w0[j], w1[j], w2[j], w3[j]
            a0[j] += x00 * u0 + x01 * u1 + x02 * u2 + x03 * u3
            a1[j] += x10 * u0 + x11 * u1 + x12 * u2 + x13 * u3
            a2[j] += x20 * u0 + x21 * u1 + x22 * u2 + x23 * u3
            a3[j] += x30 * u0 + x31 * u1 + x32 * u2 + x33 * u3
        k += 4
    while k < hidden:
        w0 = wh[k]
        x0, x1, x2, x3 = h0[k], h1[k], h2[k], h3[k]
        for j in range(width):
            u0 = w0[j]
            a0[j] += x0 * u0
            a1[j] += x1 * u0
            a2[j] += x2 * u0
            a3[j] += x3 * u0
        k += 1


@njit(inline="always", **_OPTS)
def _rec(hs, rows, n, wh, acc):
    """acc[q] = hs[rows[q]] @ wh for the n (1..4) rows of a block."""
    if n == 4:
        _rec4(hs[rows[0]], hs[rows[1]], hs[rows[2]], hs[rows[3]], wh, acc[0], acc[1], acc[2], acc[3])
    else:
        for q in range(n):
            _rec1(hs[rows[q]], wh, acc[q])


@njit(inline="always", **_OPTS)
def _rows_at(starts, order, active, t, r, rows, ticks):
    """The next up-to-four packed rows of step t from row r: their groups and ticks; returns how many."""
    n = min(4, active[t] - r)
    for q in range(n):
        g = order[r + q]
        rows[q] = g
        ticks[q] = starts[g] + t
    return n


def lstm_layer(x, wx, b, starts, order, active, reset, h, c, wh, out):
    """Keras' LSTMCell with tanh/sigmoid; columns i, f, o, g with i, f, o halved (sigmoid via tanh)."""
    hidden = h.shape[1]
    half = np.float32(0.5)
    acc = np.empty((4, 4 * hidden), np.float32)
    accx = np.empty((4, 4 * hidden), np.float32)
    rows = np.empty(4, np.int64)
    ticks = np.empty(4, np.int64)
    for t in range(active.shape[0]):
        r = 0
        while r < active[t]:
            n = _rows_at(starts, order, active, t, r, rows, ticks)
            for q in range(n):
                if reset[ticks[q]]:
                    h[rows[q]] = 0.0
                    c[rows[q]] = 0.0
            _rec(h, rows, n, wh, acc)
            _rec(x, ticks, n, wx, accx)
            for q in range(n):
                i = ticks[q]
                hq, cq, zq, aq, oq = h[rows[q]], c[rows[q]], accx[q], acc[q], out[i]
                for j in range(hidden):
                    ig = half * _tanh(zq[j] + aq[j] + b[j]) + half
                    fg = half * _tanh(zq[hidden + j] + aq[hidden + j] + b[hidden + j]) + half
                    og = half * _tanh(zq[2 * hidden + j] + aq[2 * hidden + j] + b[2 * hidden + j]) + half
                    gg = _tanh(zq[3 * hidden + j] + aq[3 * hidden + j] + b[3 * hidden + j])
                    cn = fg * cq[j] + ig * gg
                    cq[j] = cn
                    hn = og * _tanh(cn)
                    hq[j] = hn
                    oq[j] = hn
            r += n


def gru_layer(x, wx, b, starts, order, active, reset, h, b_rec, wh, out):
    """Keras' GRUCell, reset_after=True, tanh/sigmoid; columns z, r, h; ``b`` the input bias, ``b_rec``
    the recurrent one: z, r = sigmoid(xw + b + h @ W_h + b_rec); hh = tanh(xw_h + b_h + r * (h @ W_h + b_rec)_h)."""
    hidden = h.shape[1]
    half = np.float32(0.5)
    one = np.float32(1.0)
    acc = np.empty((4, 3 * hidden), np.float32)
    accx = np.empty((4, 3 * hidden), np.float32)
    rows = np.empty(4, np.int64)
    ticks = np.empty(4, np.int64)
    for t in range(active.shape[0]):
        r = 0
        while r < active[t]:
            n = _rows_at(starts, order, active, t, r, rows, ticks)
            for q in range(n):
                if reset[ticks[q]]:
                    h[rows[q]] = 0.0
            _rec(h, rows, n, wh, acc)
            _rec(x, ticks, n, wx, accx)
            for q in range(n):
                i = ticks[q]
                hq, zq, aq, oq = h[rows[q]], accx[q], acc[q], out[i]
                for j in range(hidden):
                    z = half * _tanh(half * ((zq[j] + b[j]) + (aq[j] + b_rec[j]))) + half
                    rg = half * _tanh(half * ((zq[hidden + j] + b[hidden + j])
                                              + (aq[hidden + j] + b_rec[hidden + j]))) + half
                    hh = _tanh((zq[2 * hidden + j] + b[2 * hidden + j])
                               + rg * (aq[2 * hidden + j] + b_rec[2 * hidden + j]))
                    hn = z * hq[j] + (one - z) * hh
                    hq[j] = hn
                    oq[j] = hn
            r += n


def rnn_layer(x, wx, b, starts, order, active, reset, h, unused, wh, out):
    """Keras' SimpleRNNCell with tanh: h = tanh(xw + b + h @ W_h)."""
    hidden = h.shape[1]
    acc = np.empty((4, hidden), np.float32)
    accx = np.empty((4, hidden), np.float32)
    rows = np.empty(4, np.int64)
    ticks = np.empty(4, np.int64)
    for t in range(active.shape[0]):
        r = 0
        while r < active[t]:
            n = _rows_at(starts, order, active, t, r, rows, ticks)
            for q in range(n):
                if reset[ticks[q]]:
                    h[rows[q]] = 0.0
            _rec(h, rows, n, wh, acc)
            _rec(x, ticks, n, wx, accx)
            for q in range(n):
                i = ticks[q]
                hq, zq, aq, oq = h[rows[q]], accx[q], acc[q], out[i]
                for j in range(hidden):
                    hn = _tanh(zq[j] + b[j] + aq[j])
                    hq[j] = hn
                    oq[j] = hn
            r += n


@njit(inline="always", fastmath=_FLAGS | {"reassoc", "contract"}, error_model="numpy", boundscheck=False)
def _dot_rows(x, w, out):
    """out[:, 0] = x @ w[:, 0]: a reduction per row, vectorised over k in an order fixed by the width."""
    for i in range(x.shape[0]):
        xi = x[i]
        s = np.float32(0.0)
        for k in range(x.shape[1]):
            s += xi[k] * w[k, 0]
        out[i, 0] = s


def project(x, w, out):
    """out = x @ w, row by row (four rows at a time): unlike a BLAS GEMM, whose blocking (and so its
    rounding) depends on how many rows it is given, each row's numbers here depend on that row alone."""
    n = x.shape[0]
    if w.shape[1] == 1:
        _dot_rows(x, w, out)
        return
    i = 0
    while i + 4 <= n:
        _rec4(x[i], x[i + 1], x[i + 2], x[i + 3], w, out[i], out[i + 1], out[i + 2], out[i + 3])
        i += 4
    while i < n:
        _rec1(x[i], w, out[i])
        i += 1


_F2 = types.Array(types.float32, 2, "C")
_F1 = types.Array(types.float32, 1, "C")
_I1 = types.Array(types.int64, 1, "C")
_B1 = types.Array(types.boolean, 1, "C")
SIGNATURE = types.void(_F2, _F2, _F1, _I1, _I1, _I1, _B1, _F2, _F2, _F2, _F2)
SIGNATURE_1 = types.void(_F2, _F2, _F1, _I1, _I1, _I1, _B1, _F2, _F1, _F2, _F2)  # GRU: b_rec (H3,); RNN: unused (0,)


def compile_all(cache: bool) -> tuple:
    """The three loops and the row-by-row product compiled for this CPU (loaded from the cache when it holds them)."""
    out = []
    for fn, sig, opts in ((lstm_layer, SIGNATURE, _FUSED), (gru_layer, SIGNATURE_1, _FUSED),
                          (rnn_layer, SIGNATURE_1, _FUSED), (project, types.void(_F2, _F2, _F2), _OPTS)):
        dispatcher = njit(sig, nogil=True, cache=cache, **opts)(fn)
        out.append(dispatcher)
    return tuple(out)
