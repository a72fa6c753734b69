"""Ragged stepping of a stack of recurrent layers over gathered state rows.

The math is Keras' ``LSTMCell`` (gate order i, f, g, o; sigmoid recurrent
activation, tanh activation), evaluated with NumPy/BLAS on the weights of the
trained Keras model. Who feeds it which rows is the caller's business: this
module receives ticks laid out instrument after instrument, the gathered h/c
rows of those instruments, and returns the outputs after every tick and the
final h/c of every instrument.

How the ragged batch is stepped: instruments are ranked by how many ticks
they have in the batch (most first), so at step t the instruments still
active are a prefix ``[:a_t]`` of the ranked rows ("packed sequence" layout).
The input projection ``x @ W_x + b`` is done per block of rows in the wide
steps and in one GEMM over the ticks of the narrow ones; each step then does
one small GEMM ``h[:a_t] @ W_h`` and the element-wise gates, in place. An instrument with 500 ticks takes 500 steps; one with 1 takes 1.

The stack (:class:`operators.layers.Stack`) may hold GRU and SimpleRNN layers,
LSTMs with other activations, and per-tick layers before, between and after
them; those are stepped in the same packed layout with the NumPy cells of
:mod:`operators.layers` (per-tick layers run once over all ticks of the
batch). An LSTM with Keras' default activations (tanh, sigmoid) takes the
fast path below, whatever else the stack holds.

When every recurrent layer is one :mod:`operators.compiled` has a loop for
(LSTM and GRU with Keras' default activations, SimpleRNN with tanh) and the
compiled kernels load, each recurrent layer is instead one call that runs all
its steps (no return to Python per step); the NumPy path above stays the
reference the tests hold it to.

Sigmoid is evaluated as ``0.5 * tanh(x / 2) + 0.5`` so the four gates need a
single ``tanh`` call per step; the halving is folded into the weights of the
i, f, o columns once (exact: scaling by a power of two).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from operators import blas, compiled
from operators.layers import PerTick, Recurrent, RecurrentCell, Stack

_BLOCK_ROWS = 1024
_THREADED_TICKS = 512  # smaller batches stay on one thread (handing work to the pool costs more than it saves)
_WIDE_STEP_ROWS = 256  # steps at least this wide project their inputs block by block


@dataclass(frozen=True)
class LSTMLayerWeights:
    kernel: np.ndarray  # (F_in, 4H), Keras column order i, f, g, o
    recurrent: np.ndarray  # (H, 4H)
    bias: np.ndarray  # (4H,)

    @property
    def hidden(self) -> int:
        return self.recurrent.shape[0]


@dataclass(frozen=True)
class LSTMWeights:
    layers: tuple[LSTMLayerWeights, ...]
    dense_kernel: np.ndarray  # (H,)
    dense_bias: float

    @property
    def hidden(self) -> int:
        return self.layers[0].hidden

    @property
    def n_inputs(self) -> int:
        return self.layers[0].kernel.shape[0]

    def stack(self) -> Stack:
        """The same model as a general stack: the LSTMs, then the Dense(1) head."""
        layers: list = [Recurrent("lstm", f"lstm_{i}", lw.kernel, lw.recurrent, lw.bias)
                        for i, lw in enumerate(self.layers)]
        layers.append(PerTick("dense", "forecast", np.asarray(self.dense_kernel, np.float32).reshape(-1, 1),
                              np.asarray([self.dense_bias], np.float32)))
        return Stack(tuple(layers), self.n_inputs)


@dataclass(frozen=True)
class Packing:
    """Where each tick goes in the packed (time-major, prefix-active) layout."""

    rank: np.ndarray  # (G,) packed row of each group (instrument)
    order: np.ndarray  # (G,) group at each packed row = argsort(rank)
    active: np.ndarray  # (max_len,) a_t = number of groups with more than t ticks
    offsets: np.ndarray  # (max_len,) first packed tick of step t
    position: np.ndarray  # (T,) packed position of each tick (ticks in group order)

    @classmethod
    def build(cls, lengths: np.ndarray) -> "Packing":
        lengths = np.asarray(lengths, dtype=np.int64)
        g = len(lengths)
        order = np.argsort(-lengths, kind="stable")
        rank = np.empty(g, dtype=np.int64)
        rank[order] = np.arange(g)
        max_len = int(lengths.max()) if g else 0
        counts = np.bincount(lengths, minlength=max_len + 1)
        active = g - np.cumsum(counts)[:max_len]
        offsets = np.zeros(max_len, dtype=np.int64)
        if max_len > 1:
            offsets[1:] = np.cumsum(active)[:-1]
        starts = np.zeros(g, dtype=np.int64)
        if g > 1:
            starts[1:] = np.cumsum(lengths)[:-1]
        total = int(lengths.sum())
        group_of_tick = np.repeat(np.arange(g), lengths)
        step_of_tick = np.arange(total) - np.repeat(starts, lengths)
        position = offsets[step_of_tick] + rank[group_of_tick]
        return cls(rank, order, active, offsets, position)


class RaggedLSTM:
    """A stack of recurrent and per-tick layers that steps ragged per-instrument sequences.

    Built from :class:`LSTMWeights` (the built-in stacked LSTM + Dense(1) head) or any
    :class:`operators.layers.Stack`."""

    def __init__(self, weights: LSTMWeights | Stack, compiled_loop: bool = True):
        self.weights = weights
        self.stack = weights.stack() if isinstance(weights, LSTMWeights) else weights
        self._gemm_threads = blas.gemm_threads()  # see operators.blas: small GEMMs, one thread each
        self.outputs = self.stack.outputs
        self.state_vectors = self.stack.state_vectors
        self._plan: list[tuple] = []
        for layer in self.stack.layers:
            if isinstance(layer, PerTick):
                self._plan.append(("tick", layer))
            elif layer.kind == "lstm" and (layer.activation, layer.recurrent_activation) == ("tanh", "sigmoid"):
                self._plan.append(("lstm", *compiled.lstm_gate_weights(layer)))
            else:
                self._plan.append(("cell", RecurrentCell(layer)))
        self._scratch: dict[str, np.ndarray] = {}
        # The compiled time loop (operators.compiled) when it serves every recurrent layer; NumPy otherwise.
        self._kernels = compiled.load() if compiled_loop else None
        self._threads = compiled.loop_threads()
        self._pool: ThreadPoolExecutor | None = None
        self._loops = compiled.plan(self.stack, self._kernels) if self._kernels is not None else None
        if compiled_loop and self._kernels is None:
            self.why_not_compiled = compiled.unavailable()
        elif not compiled_loop:
            self.why_not_compiled = "the NumPy path was asked for"
        else:
            self.why_not_compiled = "" if self._loops is not None else compiled.uncompiled_layer(self.stack)

    @property
    def compiled(self) -> bool:
        """Whether the compiled time loop steps this model (else the NumPy path; ``why_not_compiled`` says why)."""
        return self._loops is not None

    def _cell(self, z: np.ndarray, hs: np.ndarray, cs: np.ndarray, wh: np.ndarray, b: np.ndarray,
              rec: np.ndarray, tc: np.ndarray) -> None:
        """One LSTM step for a block of rows, in place: z holds x @ W_x on entry (plus b on the NumPy path)."""
        hidden = hs.shape[1]
        np.matmul(hs, wh, out=rec)
        z += rec
        np.tanh(z, out=z)
        ifo = z[:, : 3 * hidden]
        ifo *= 0.5  # sigmoid(u) = 0.5 * tanh(u / 2) + 0.5; the halving is in the weights
        ifo += 0.5
        i_g = z[:, :hidden]
        f_g = z[:, hidden : 2 * hidden]
        o_g = z[:, 2 * hidden : 3 * hidden]
        g_g = z[:, 3 * hidden :]
        cs *= f_g
        np.multiply(i_g, g_g, out=i_g)
        cs += i_g
        np.tanh(cs, out=tc)
        np.multiply(o_g, tc, out=hs)

    def _workspace(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """A reusable scratch array: fresh multi-MB temporaries cost page faults on every batch."""
        need = shape[0] * shape[1]
        buf = self._scratch.get(name)
        if buf is None or buf.size < need:
            buf = np.empty(max(need, 2 * (buf.size if buf is not None else 0)), dtype=np.float32)
            self._scratch[name] = buf
        return buf[:need].reshape(shape)

    def run(
        self,
        x: np.ndarray,
        lengths: np.ndarray,
        h0: list[np.ndarray],
        c0: list[np.ndarray],
        reset: np.ndarray | None = None,
        in_place: bool = False,
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """:meth:`step` for a stack of LSTMs and one output per tick, with h and c per layer apart.

        Returns (y (T,) float32 output after each tick, hN, cN per layer)."""
        states = [a for pair in zip(h0, c0) for a in pair]
        y, out = self.step(x, lengths, states, reset, in_place)
        return y.reshape(-1), out[0::2], out[1::2]

    def step(
        self,
        x: np.ndarray,
        lengths: np.ndarray,
        states: list[np.ndarray],
        reset: np.ndarray | None = None,
        in_place: bool = False,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Step every group through its ticks.

        x: (T, F) float32, ticks group after group, in each group's order.
        lengths: (G,) ticks per group, each >= 1.
        states: one (G, width) float32 array of gathered rows per state vector, in the order of
        ``state_vectors`` (h0, c0 of an LSTM, h1 of a GRU, ...); not modified unless ``in_place``.
        reset: optional (T,) bool; state is zeroed before stepping that tick.
        in_place: the state arrays are the caller's scratch copies (C-contiguous): when the groups come
        longest first (always so when every group has one tick) they are stepped where they lie and
        returned, saving two permutation copies per vector.
        Returns (y (T, K) float32 output after each tick, the final state vectors in the same order).
        """
        with blas.limit(self._gemm_threads):
            if self._loops is not None:
                return self._run_compiled(x, lengths, states, reset, in_place)
            return self._run(x, lengths, states, reset, in_place)

    def _run(self, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray],
             reset: np.ndarray | None, in_place: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        g = len(lengths)
        t_total = len(x)
        if g == 0 or t_total == 0:
            return np.zeros((0, self.outputs), np.float32), [a.copy() for a in states]
        pk = Packing.build(lengths)
        # Longest first already: the packed order is the group order (stable argsort).
        identity = g < 2 or bool(np.all(lengths[:-1] >= lengths[1:]))
        packed = np.empty((t_total, x.shape[1]), dtype=np.float32)
        packed[pk.position] = x
        reset_steps: list[np.ndarray | None] = [None] * len(pk.active)
        if reset is not None and reset.any():
            packed_reset = np.zeros(t_total, dtype=bool)
            packed_reset[pk.position] = reset
            for t in np.unique(np.searchsorted(pk.offsets, np.flatnonzero(packed_reset), side="right") - 1):
                s, a = pk.offsets[t], pk.active[t]
                reset_steps[t] = np.flatnonzero(packed_reset[s : s + a])

        out_states: list[np.ndarray] = []
        layer_in = packed
        n_rec = 0
        for kind, *plan in self._plan:
            if kind == "tick":
                layer_in = plan[0].apply(layer_in)
                continue
            k = len(out_states)
            if kind == "lstm":
                new, layer_in = self._lstm_layer(pk, identity, in_place, layer_in, states[k], states[k + 1],
                                                 reset_steps, n_rec, *plan)
            else:
                new, layer_in = self._cell_layer(pk, identity, in_place, layer_in, states[k : k + len(
                    plan[0].layer.state_names)], reset_steps, n_rec, plan[0])
            out_states += new
            n_rec += 1
        y = layer_in if layer_in.ndim == 2 else layer_in.reshape(t_total, -1)
        return y[pk.position], out_states

    def _gathered(self, pk: Packing, identity: bool, own: bool, rows: np.ndarray, name: str) -> np.ndarray:
        """State rows in packed order: the caller's own array, or a workspace copy."""
        if own:
            return rows
        g, width = rows.shape
        if identity:
            buf = self._workspace(name, (g, width))
            buf[...] = rows
            return buf
        return np.take(rows, pk.order, axis=0, out=self._workspace(name, (g, width)))

    @staticmethod
    def _ungathered(pk: Packing, identity: bool, own: bool, rows: np.ndarray) -> np.ndarray:
        # packed row r holds group order[r]; back to group order
        return rows if own else rows.copy() if identity else rows[pk.rank]

    def _lstm_layer(self, pk: Packing, identity: bool, in_place: bool, layer_in: np.ndarray, h0: np.ndarray,
                    c0: np.ndarray, reset_steps: list, layer: int, wx: np.ndarray, wh: np.ndarray,
                    b: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """One tanh/sigmoid LSTM layer: the NumPy fast path."""
        t_total = len(layer_in)
        hidden = wh.shape[0]
        active = pk.active.tolist()
        offsets = pk.offsets.tolist()
        block = min(active[0], _BLOCK_ROWS)
        rec_all = self._workspace("rec", (block, 4 * hidden))
        tmp_all = self._workspace("tmp", (block, hidden))
        z_all = self._workspace("z", (block, 4 * hidden))
        # Input projection x @ W_x: inside the wide steps, per row block into a block-sized buffer
        # that stays in cache; for the narrow tail steps, one GEMM over their ticks (one call
        # instead of one per step). Steps are widest first, so the wide ones are a prefix.
        n_wide = int(np.count_nonzero(pk.active >= _WIDE_STEP_ROWS))
        tail = offsets[n_wide] if n_wide < len(offsets) else t_total
        gates = self._workspace("gates", (t_total - tail, 4 * hidden))
        np.matmul(layer_in[tail:], wx, out=gates)
        gates += b
        own = identity and in_place and all(a.flags.c_contiguous and a.dtype == np.float32 for a in (h0, c0))
        h = self._gathered(pk, identity, own, h0, "h")
        c = self._gathered(pk, identity, own, c0, "c")
        # One step (every group has one tick) on the caller's rows: the outputs are h itself, no copy.
        out = h if own and len(offsets) == 1 else self._workspace(f"out{layer % 2}", (t_total, hidden))
        for t, (s, a) in enumerate(zip(offsets, active)):
            if reset_steps[t] is not None:
                h[reset_steps[t]] = 0.0
                c[reset_steps[t]] = 0.0
            # Row blocks keep each block's gates in L2 across the element-wise passes.
            for r0 in range(0, a, _BLOCK_ROWS):
                r1 = min(a, r0 + _BLOCK_ROWS)
                if t < n_wide:
                    z = np.matmul(layer_in[s + r0 : s + r1], wx, out=z_all[: r1 - r0])
                    z += b
                else:
                    z = gates[s - tail + r0 : s - tail + r1]
                self._cell(z, h[r0:r1], c[r0:r1], wh, b, rec_all[: r1 - r0], tmp_all[: r1 - r0])
            if out is not h:
                out[s : s + a] = h[:a]
        return [self._ungathered(pk, identity, own, h), self._ungathered(pk, identity, own, c)], out

    def _cell_layer(self, pk: Packing, identity: bool, in_place: bool, layer_in: np.ndarray,
                    state0: list[np.ndarray], reset_steps: list, layer: int,
                    cell: RecurrentCell) -> tuple[list[np.ndarray], np.ndarray]:
        """Any other recurrent layer (GRU, SimpleRNN, LSTM with other activations): NumPy cells."""
        xw = cell.prepare(layer_in)
        own = identity and in_place and all(a.flags.c_contiguous and a.dtype == np.float32 for a in state0)
        st = [self._gathered(pk, identity, own, a, f"s{i}") for i, a in enumerate(state0)]
        out = np.empty((len(layer_in), cell.units), dtype=np.float32)
        for t, (s, a) in enumerate(zip(pk.offsets.tolist(), pk.active.tolist())):
            if reset_steps[t] is not None:
                for v in st:
                    v[reset_steps[t]] = 0.0
            out[s : s + a] = cell.step(xw[s : s + a], [v[:a] for v in st])[:a]
        return [self._ungathered(pk, identity, own, v) for v in st], out

    def _run_compiled(self, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray],
                      reset: np.ndarray | None, in_place: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every recurrent layer as one compiled call over all its steps (operators.compiled), ticks and state
        rows where they lie: the packed order is only an index (longest groups first)."""
        g, t_total = len(lengths), len(x)
        if g == 0 or t_total == 0:
            return np.zeros((0, self.outputs), np.float32), [a.copy() for a in states]
        lengths = np.asarray(lengths, dtype=np.int64)
        if g < 2 or bool(np.all(lengths[:-1] >= lengths[1:])):
            order = np.arange(g, dtype=np.int64)
        else:
            order = np.argsort(-lengths, kind="stable").astype(np.int64)
        max_len = int(lengths[order[0]])
        active = (g - np.cumsum(np.bincount(lengths, minlength=max_len + 1))[:max_len]).astype(np.int64)
        starts = np.zeros(g, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        if reset is None:
            reset = np.zeros(t_total, dtype=np.bool_)
        reset = np.ascontiguousarray(reset, dtype=np.bool_)
        own = in_place and all(a.flags.c_contiguous and a.dtype == np.float32 for a in states)
        st = list(states) if own else [np.array(a, dtype=np.float32, order="C") for a in states]
        layer_in = np.ascontiguousarray(x, dtype=np.float32)
        k = n_rec = 0
        project = self._kernels.project
        parts = min(self._threads, g) if t_total >= _THREADED_TICKS else 1
        dealt = [(order, active)] if parts == 1 else compiled.deal(order, lengths, parts)
        for kind, *plan in self._loops:
            if kind == "tick":
                layer_in = compiled.per_tick(plan[0], plan[1], layer_in, project)
                continue
            fn, wx, b, wh, extra = plan
            out = self._workspace(f"out{n_rec % 2}", (t_total, wh.shape[0]))
            layer_in = np.ascontiguousarray(layer_in, dtype=np.float32)
            second = st[k + 1] if kind == "lstm" else extra
            self._each(dealt, lambda o, a: fn(layer_in, wx, b, starts, o, a, reset, st[k], second, wh, out))
            k += 2 if kind == "lstm" else 1
            layer_in = out
            n_rec += 1
        y = layer_in if layer_in.ndim == 2 else layer_in.reshape(t_total, -1)
        return y.copy(), st  # a copy: y may be a workspace (or a view of one) the next batch overwrites

    def _each(self, dealt: list[tuple[np.ndarray, np.ndarray]], step) -> None:
        """``step(order, active)`` for each worker's groups: the first here, the others on the pool (the loops
        release the GIL); they touch disjoint state rows and ticks."""
        if len(dealt) == 1:
            step(*dealt[0])
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads - 1, thread_name_prefix="tickcast-loop")
        futures = [self._pool.submit(step, *part) for part in dealt[1:]]
        step(*dealt[0])
        for f in futures:
            f.result()
