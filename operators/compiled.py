"""The compiled time loop: every step of a recurrent layer over a ragged batch, in one call.

A batch of few instruments with many ticks each is a long run of narrow steps
(4 instruments, 5,000 ticks: 1,250 steps of 4 rows); stepped from Python, each
step pays call overhead that dwarfs its arithmetic. The functions here take a
whole layer's batch at once: for every step of the packed layout (the groups
ranked longest first, so the groups still active at step t are the first
``active[t]`` of ``order``), the recurrent product ``h @ W_h`` of each active row,
the gates and the state update, the output after each tick, and the
zeroing of a row's state where a tick starts its instrument afresh, and each
tick's input projection ``x @ W_x`` beside its recurrent product (no temporary of
every tick's gates). Dense per-tick layers are :func:`project`, row by row; other
per-tick layers run in NumPy over all ticks.

Every product here is formed row by row, in an order fixed by the layer's
shape alone, so a tick's numbers do not depend on which other ticks or
instruments share its batch: the compiled path is batch-invariant to the bit
(a BLAS GEMM is not: its blocking, and so its rounding, depends on the number
of rows it is given).

Rows are addressed through ``order`` and each tick's row of ``xw``/``out`` is
``starts[g] + t``, so neither the state rows nor the ticks are permuted into a
packed copy. Active rows go four at a time, so each weight is loaded once for
four rows; a row's sums are added in the same order whichever path (four rows
or one) steps it, so its numbers do not depend on who shares its step.

Compiled with numba (LLVM, from the wheel: no C compiler at install or run
time), for the CPU it runs on, on first use in a process; the machine code is
cached in ``NUMBA_CACHE_DIR`` (default: ``<kernel cache>/numba``, see
:func:`cache_dir`) so later starts load it; ``TICKCAST_KERNEL_CACHE_SEED`` names a
cache made in advance (the image builds one) that is copied there first. When numba is missing or
``TICKCAST_NATIVE_KERNEL=0`` is set, :func:`load` returns None with the reason
and the NumPy path (:mod:`operators.lstm`, the reference) runs. The math is
Keras' cells, with Eigen's rational float ``tanh`` (what TensorFlow's CPU kernels
use; a few ulp from the exact value) so the gates vectorise; sigmoid is
``0.5 * tanh(x / 2) + 0.5`` with the halving folded into the weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from operators.errors import EnvironmentSettingError
from operators.layers import PerTick, Recurrent, RecurrentCell, Stack, activation


def cache_dir() -> Path:
    """Where compiled machine code is kept: ``TICKCAST_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/tickcast``."""
    env = os.environ.get("TICKCAST_KERNEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tickcast"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Kernels:
    """The compiled layer loops (see the module docstring for their arguments)."""

    lstm: Callable
    gru: Callable
    rnn: Callable
    project: Callable  # out = x @ w row by row: each row's numbers depend on that row alone
    seconds: float  # time to compile or load them
    cached: bool  # machine code kept across processes


_STATE: dict[str, object] = {}


def load() -> Kernels | None:
    """The compiled kernels, built once per process; None when disabled or numba is unavailable
    (:func:`unavailable` then says why)."""
    if "kernels" in _STATE:
        return _STATE["kernels"]  # type: ignore[return-value]
    kernels, why = None, ""
    if os.environ.get("TICKCAST_NATIVE_KERNEL", "1") == "0":
        why = "TICKCAST_NATIVE_KERNEL=0"
    else:
        try:
            kernels = _build()
        except ImportError as e:
            why = f"numba is not installed ({e}); pip install numba"
        except Exception as e:  # noqa: BLE001 - a compiler failure must leave the NumPy path serving
            why = f"compiling failed: {type(e).__name__}: {e}"
    _STATE["kernels"], _STATE["why"] = kernels, why
    return kernels


def unavailable() -> str:
    """Why :func:`load` returned None ("" when it did not)."""
    load()
    return str(_STATE["why"])


def _build() -> Kernels:
    start = time.perf_counter()
    cached = bool(os.environ.get("NUMBA_CACHE_DIR")) and _writable(Path(os.environ["NUMBA_CACHE_DIR"]))
    if not os.environ.get("NUMBA_CACHE_DIR"):
        target = cache_dir() / "numba"
        if _writable(target):
            os.environ["NUMBA_CACHE_DIR"] = str(target)  # read by numba when it is first imported, just below
            cached = True
    seed = os.environ.get("TICKCAST_KERNEL_CACHE_SEED")
    if cached and seed and Path(seed).is_dir():
        # Machine code compiled when the image was built (a read-only layer): copied into the writable
        # cache, so a container with a read-only root filesystem starts without compiling.
        shutil.copytree(seed, os.environ["NUMBA_CACHE_DIR"], dirs_exist_ok=True)
    from operators import _loops  # noqa: PLC0415 - numba and its compiler only when the kernels are asked for

    lstm, gru, rnn, project = _loops.compile_all(cache=cached)
    return Kernels(lstm, gru, rnn, project, time.perf_counter() - start, cached)


def loop_threads() -> int:
    """Threads the compiled loop deals a batch's instruments over: ``TICKCAST_LOOP_THREADS`` (1-64, default 1).
    Instruments are independent, so each thread steps its own through every step; the numbers are the same
    to the bit whatever the count."""
    raw = os.environ.get("TICKCAST_LOOP_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise EnvironmentSettingError(f"TICKCAST_LOOP_THREADS={raw!r} is not a whole number of threads from 1 to 64")
    return n


def deal(order: np.ndarray, lengths: np.ndarray, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The groups of ``order`` (longest first) dealt round-robin to ``parts`` workers: per worker its groups
    (still longest first) and how many of them step at each step."""
    out = []
    for w in range(parts):
        mine = np.ascontiguousarray(order[w::parts])
        lens = lengths[mine]
        longest = int(lens[0])
        active = (len(mine) - np.cumsum(np.bincount(lens, minlength=longest + 1))[:longest]).astype(np.int64)
        out.append((mine, active))
    return out


# -- a model's layers as the loops take them ---------------------------------------------------


def lstm_gate_weights(layer: Recurrent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W_x, W_h and bias of a tanh/sigmoid LSTM with the gate columns i, f, c, o reordered to i, f, o, g (the
    three sigmoid gates contiguous) and those halved (sigmoid via tanh; exact: a power of two)."""
    h = layer.units
    perm = np.concatenate([np.arange(0, 2 * h), np.arange(3 * h, 4 * h), np.arange(2 * h, 3 * h)])
    scale = np.ones(4 * h, dtype=np.float32)
    scale[: 3 * h] = 0.5
    bias = layer.bias if layer.bias is not None else np.zeros(4 * h, np.float32)
    wx = np.ascontiguousarray(layer.kernel[:, perm] * scale, dtype=np.float32)
    wh = np.ascontiguousarray(layer.recurrent[:, perm] * scale, dtype=np.float32)
    b = np.ascontiguousarray(np.asarray(bias)[perm] * scale, dtype=np.float32)
    return wx, wh, b


def per_tick(layer: PerTick, kernel: np.ndarray | None, x: np.ndarray, project) -> np.ndarray:
    """A per-tick layer on the compiled path: Dense with the row-by-row product, the rest as NumPy has it."""
    if layer.kind != "dense":
        return np.ascontiguousarray(layer.apply(x), dtype=np.float32)
    y = np.empty((len(x), kernel.shape[1]), np.float32)
    project(np.ascontiguousarray(x, dtype=np.float32), kernel, y)
    if layer.bias is not None:
        y += np.asarray(layer.bias, dtype=np.float32)
    return np.ascontiguousarray(activation(layer.activation)(y), dtype=np.float32)


def _compilable(layer: Recurrent) -> bool:
    acts = (layer.activation, layer.recurrent_activation)
    return ((layer.kind == "lstm" and acts == ("tanh", "sigmoid"))
            or (layer.kind == "gru" and layer.reset_after and acts == ("tanh", "sigmoid"))
            or (layer.kind == "rnn" and layer.activation == "tanh"))


def uncompiled_layer(stack: Stack) -> str:
    for layer in stack.recurrent:
        if not _compilable(layer):
            return f"the compiled loop has no {layer.describe()} layer ({layer.name})"
    return ""


def plan(stack: Stack, kernels: Kernels) -> list[tuple] | None:
    """Per layer: ("tick", layer, its Dense kernel or None) or (kind, loop, W_x, bias, W_h, extra) for the compiled loops; None when a
    recurrent layer has no compiled loop (the whole stack then takes the NumPy path)."""
    if not all(_compilable(layer) for layer in stack.recurrent):
        return None
    steps: list[tuple] = []
    for layer in stack.layers:
        if isinstance(layer, PerTick):
            steps.append(("tick", layer, _own(layer.kernel) if layer.kind == "dense" else None))
            continue
        units = layer.units
        if layer.kind == "lstm":
            wx, wh, b = lstm_gate_weights(layer)
            steps.append(("lstm", kernels.lstm, _own(wx), _own(b), _own(wh), None))
            continue
        cell = RecurrentCell(layer)
        width = 3 * units if layer.kind == "gru" else units
        b_in = cell.b_in if cell.b_in is not None else np.zeros(width, np.float32)
        extra = cell.b_rec if layer.kind == "gru" and cell.b_rec is not None else np.zeros(
            width if layer.kind == "gru" else 0, np.float32)
        loop = kernels.gru if layer.kind == "gru" else kernels.rnn
        steps.append((layer.kind, loop, _own(cell.wx), _own(b_in), _own(cell.wh), _own(extra)))
    return steps


def _own(a: np.ndarray) -> np.ndarray:
    """A writable C-contiguous float32 array, as the compiled loops' signatures take (weights read from a model
    file may be read-only views)."""
    return np.require(a, dtype=np.float32, requirements=["C", "W"])
