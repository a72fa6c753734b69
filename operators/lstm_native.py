"""An optional compiled kernel for the element-wise half of an LSTM (and a GRU) step.

NumPy evaluates a step's gates in separate passes over memory, and its float32
``tanh`` costs about twenty times a multiply here; at one or two ticks per
instrument that is most of the operator's time. This module holds a small C
function that does the whole element-wise step (add the recurrent term, the
four gates, the cell update, ``h = o * tanh(c)``) in one pass per row, with
Eigen's rational float ``tanh`` (the approximation TensorFlow's CPU kernels
use; a few ulp from the exact value), which the compiler vectorises.

It is built on first use with the system C compiler (``cc``, from the
distribution's packages) into a cache directory and loaded with ctypes; no
Python package is needed. When there is no compiler, the build fails, or
``TICKCAST_NATIVE_KERNEL=0`` is set, :func:`load` returns None and
``operators.lstm`` keeps its NumPy path. Both paths compute the same math;
the tests hold them to float32 rounding of each other and of Keras.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

SOURCE = r"""
/* Eigen's generic_fast_tanh_float: a 13/6 rational approximation, clamped. */
static inline float tanh_rational(float x) {
    const float clamp = 7.90531110763549805f;
    float ax = __builtin_fabsf(x);
    float xc = x > clamp ? clamp : x;  /* ternaries, not fminf: vectorised without -ffinite-math-only */
    xc = xc < -clamp ? -clamp : xc;
    float x2 = xc * xc;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * xc;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    float r = p / q;
    return ax < 0.0004f ? x : r;
}

/* One LSTM step for `rows` rows, in place. z: (rows, 4H) input projection x @ W_x,
   gate columns i, f, o, g with i, f, o pre-halved (sigmoid(u) = 0.5 tanh(u/2) + 0.5);
   rec: (rows, 4H) h @ W_h; bias: (4H,), same layout; h, c: (rows, H), updated. */
void lstm_step(const float *restrict z, const float *restrict rec, const float *restrict bias,
               float *restrict h, float *restrict c, long rows, long hidden) {
    const float *bi = bias, *bf = bi + hidden, *bo = bf + hidden, *bg = bo + hidden;
    for (long r = 0; r < rows; r++) {
        const float *zi = z + r * 4 * hidden, *zf = zi + hidden, *zo = zf + hidden, *zg = zo + hidden;
        const float *ri = rec + r * 4 * hidden, *rf = ri + hidden, *ro = rf + hidden, *rg = ro + hidden;
        float *hr = h + r * hidden;
        float *cr = c + r * hidden;
        for (long j = 0; j < hidden; j++) {
            float i = 0.5f * tanh_rational(zi[j] + ri[j] + bi[j]) + 0.5f;
            float f = 0.5f * tanh_rational(zf[j] + rf[j] + bf[j]) + 0.5f;
            float o = 0.5f * tanh_rational(zo[j] + ro[j] + bo[j]) + 0.5f;
            float g = tanh_rational(zg[j] + rg[j] + bg[j]);
            float cn = f * cr[j] + i * g;
            cr[j] = cn;
            hr[j] = o * tanh_rational(cn);
        }
    }
}

/* One GRU step (Keras' GRUCell, reset_after=True, sigmoid/tanh) for `rows` rows, in place.
   xw: (rows, 3H) x @ W_x + input bias, columns z, r, h; inner: (rows, 3H) h @ W_h;
   bias: (3H,) recurrent bias; h: (rows, H), updated. */
void gru_step(const float *restrict xw, const float *restrict inner, const float *restrict bias,
              float *restrict h, long rows, long hidden) {
    const float *bz = bias, *br = bz + hidden, *bh = br + hidden;
    for (long r = 0; r < rows; r++) {
        const float *xz = xw + r * 3 * hidden, *xr = xz + hidden, *xh = xr + hidden;
        const float *iz = inner + r * 3 * hidden, *ir = iz + hidden, *ih = ir + hidden;
        float *hr = h + r * hidden;
        for (long j = 0; j < hidden; j++) {
            float z = 0.5f * tanh_rational(0.5f * (xz[j] + iz[j] + bz[j])) + 0.5f;
            float g = 0.5f * tanh_rational(0.5f * (xr[j] + ir[j] + br[j])) + 0.5f;
            float hh = tanh_rational(xh[j] + g * (ih[j] + bh[j]));
            hr[j] = z * hr[j] + (1.0f - z) * hh;
        }
    }
}
"""

_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
_LOADED: dict[str, Callable | None] = {}

LSTMStep = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
GRUStep = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def cache_dir() -> Path:
    env = os.environ.get("TICKCAST_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tickcast"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "lstm_step.c"
        src.write_text(SOURCE)
        out = Path(tmp) / target.name
        subprocess.run([compiler, *_FLAGS, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
        os.replace(out, target)  # atomic: a concurrent build never loads half a file


def _library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when disabled or they cannot be built."""
    if os.environ.get("TICKCAST_NATIVE_KERNEL", "1") == "0":
        return None
    key = hashlib.sha256("\0".join([SOURCE, *_FLAGS, platform.machine(), _cpu_signature()]).encode()).hexdigest()[:16]
    if key in _LOADED:
        return _LOADED[key]
    lib = None
    try:
        target = cache_dir() / f"lstm_step-{key}.so"
        if not target.exists():
            _build(target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        lib = None
    _LOADED[key] = lib
    return lib


def _checked(name: str, arrays) -> None:
    for a, shape in arrays:
        if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != shape:
            raise ValueError(f"{name} needs C-contiguous float32 blocks of matching rows")


def load() -> LSTMStep | None:
    """The compiled LSTM step, or None (NumPy fallback) when it is disabled or cannot be built."""
    lib = _library()
    if lib is None:
        return None
    c_fn = lib.lstm_step
    ptr = ctypes.c_void_p
    c_fn.argtypes = [ptr, ptr, ptr, ptr, ptr, ctypes.c_long, ctypes.c_long]
    c_fn.restype = None

    def fn(z: np.ndarray, rec: np.ndarray, bias: np.ndarray, h: np.ndarray, c: np.ndarray) -> None:
        rows, hidden = h.shape
        _checked("lstm_step", ((z, (rows, 4 * hidden)), (rec, (rows, 4 * hidden)), (bias, (4 * hidden,)),
                               (h, (rows, hidden)), (c, (rows, hidden))))
        c_fn(z.ctypes.data, rec.ctypes.data, bias.ctypes.data, h.ctypes.data, c.ctypes.data, rows, hidden)

    return fn


def load_gru() -> GRUStep | None:
    """The compiled GRU step (reset_after=True, sigmoid/tanh), or None (NumPy cells) as :func:`load`."""
    lib = _library()
    if lib is None:
        return None
    c_fn = lib.gru_step
    ptr = ctypes.c_void_p
    c_fn.argtypes = [ptr, ptr, ptr, ptr, ctypes.c_long, ctypes.c_long]
    c_fn.restype = None

    def fn(xw: np.ndarray, inner: np.ndarray, bias: np.ndarray, h: np.ndarray) -> None:
        rows, hidden = h.shape
        _checked("gru_step", ((xw, (rows, 3 * hidden)), (inner, (rows, 3 * hidden)), (bias, (3 * hidden,)),
                              (h, (rows, hidden))))
        c_fn(xw.ctypes.data, inner.ctypes.data, bias.ctypes.data, h.ctypes.data, rows, hidden)

    return fn
