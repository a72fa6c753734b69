"""The layers the NumPy kernel serves: their weights, their math, one step at a time.

A served model is a :class:`Stack`: a chain of layers applied to each tick's
features. *Recurrent* layers (LSTM, GRU, SimpleRNN, with Keras' equations
and variable layouts) carry per-instrument state from tick to tick; *per-tick*
layers (Dense, LayerNormalization, Activation, identity for Dropout) map
each tick's vector on its own and can sit before, between and after them.
The last layer's width is the number of outputs per tick (K).

The state of one instrument is the concatenation of each recurrent layer's
state vectors, in stack order: ``h`` then ``c`` for an LSTM, ``h`` for a GRU
or SimpleRNN (:attr:`Stack.state_vectors`; the state table keeps one column
per vector, named ``h<i>``/``c<i>`` after the recurrent layer's index).

Who feeds which rows through the recurrences (the ragged, packed-sequence
stepping) is :mod:`operators.lstm`; this module holds the cells it calls for
the layers that are not the built-in LSTM's fast path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

Array = np.ndarray


def _sigmoid(x: Array) -> Array:
    return (0.5 * np.tanh(0.5 * x) + 0.5).astype(np.float32, copy=False)


def _hard_sigmoid(x: Array) -> Array:  # Keras 3: relu6(x + 3) / 6
    return (np.clip(x + np.float32(3.0), 0.0, 6.0) / np.float32(6.0)).astype(np.float32, copy=False)


def _softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(x: Array) -> Array:
    s = x - x.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _softplus(x: Array) -> Array:
    return np.logaddexp(np.float32(0.0), x).astype(np.float32, copy=False)


_SELU_ALPHA, _SELU_SCALE = np.float32(1.6732632423543772), np.float32(1.0507009873554805)

# Keras activation names (as a saved model names them) -> their element-wise (or last-axis) math.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "linear": lambda x: x,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "relu": lambda x: np.maximum(x, np.float32(0.0)),
    "relu6": lambda x: np.clip(x, np.float32(0.0), np.float32(6.0)),
    "leaky_relu": lambda x: np.where(x >= 0, x, np.float32(0.2) * x),  # Keras' default slope
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x)),
    "softplus": _softplus,
    "softsign": lambda x: x / (np.float32(1.0) + np.abs(x)),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "hard_silu": lambda x: x * _hard_sigmoid(x),
    "hard_swish": lambda x: x * _hard_sigmoid(x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "exponential": np.exp,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
}


def activation(name: str) -> Callable[[Array], Array]:
    fn = ACTIVATIONS[name]
    return lambda x: np.asarray(fn(x), dtype=np.float32)


# -- recurrent layers ---------------------------------------------------------------


@dataclass(frozen=True)
class Recurrent:
    """An LSTM, GRU or SimpleRNN layer with Keras' variable layout.

    kernel (F, G*H), recurrent (H, G*H) with G = 4 (LSTM, columns i, f, c, o), 3 (GRU, z, r, h) or 1;
    bias (G*H,), or (2, 3H) for a GRU with ``reset_after`` (input and recurrent biases), or None.
    """

    kind: str  # "lstm", "gru" or "rnn"
    name: str
    kernel: Array
    recurrent: Array
    bias: Array | None
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"  # unused by a SimpleRNN
    reset_after: bool = True  # GRU only

    @property
    def units(self) -> int:
        return self.recurrent.shape[0]

    @property
    def n_inputs(self) -> int:
        return self.kernel.shape[0]

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("h", "c") if self.kind == "lstm" else ("h",)

    def arrays(self) -> tuple[Array, ...]:
        return (self.kernel, self.recurrent) + (() if self.bias is None else (self.bias,))

    def describe(self) -> dict:
        d = {"kind": self.kind, "name": self.name, "units": self.units, "activation": self.activation,
             "use_bias": self.bias is not None}
        if self.kind != "rnn":
            d["recurrent_activation"] = self.recurrent_activation
        if self.kind == "gru":
            d["reset_after"] = self.reset_after
        return d


class RecurrentCell:
    """One step of a recurrent layer for a block of rows, NumPy, in place on the state rows.

    ``prepare(x)`` is the input projection of many ticks at once (x @ W + input bias);
    ``step(xw, states)`` advances the rows of ``states`` (h, or h and c) by one tick whose
    projections are ``xw``, and returns the new h (a view of the state)."""

    def __init__(self, layer: Recurrent):
        self.layer = layer
        self.kind = layer.kind
        h = layer.units
        self.units = h
        self.act = activation(layer.activation)
        self.rec_act = activation(layer.recurrent_activation) if layer.kind != "rnn" else None
        self.wx = np.ascontiguousarray(layer.kernel, dtype=np.float32)
        self.wh = np.ascontiguousarray(layer.recurrent, dtype=np.float32)
        bias = None if layer.bias is None else np.asarray(layer.bias, dtype=np.float32)
        self.b_in = self.b_rec = None
        if bias is not None:
            if layer.kind == "gru" and layer.reset_after:
                self.b_in, self.b_rec = np.ascontiguousarray(bias[0]), np.ascontiguousarray(bias[1])
            else:
                self.b_in = np.ascontiguousarray(bias.reshape(-1))
        if layer.kind == "gru" and not layer.reset_after:
            self.wh_zr = np.ascontiguousarray(self.wh[:, : 2 * h])
            self.wh_h = np.ascontiguousarray(self.wh[:, 2 * h:])

    def prepare(self, x: Array) -> Array:
        xw = x @ self.wx
        if self.b_in is not None:
            xw += self.b_in
        return xw

    def step(self, xw: Array, states: list[Array]) -> Array:
        h = states[0]
        n = self.units
        if self.kind == "rnn":
            h[...] = self.act(xw + h @ self.wh)
            return h
        if self.kind == "lstm":
            z = xw + h @ self.wh
            i = self.rec_act(z[:, :n])
            f = self.rec_act(z[:, n: 2 * n])
            g = self.act(z[:, 2 * n: 3 * n])
            o = self.rec_act(z[:, 3 * n:])
            c = states[1]
            c[...] = f * c + i * g
            h[...] = o * self.act(c)
            return h
        # GRU (Keras' GRUCell): z, r gates; candidate with the reset gate after or before the matmul
        if self.layer.reset_after:
            inner = h @ self.wh
            if self.b_rec is not None:
                inner += self.b_rec
            zr = self.rec_act(xw[:, : 2 * n] + inner[:, : 2 * n])
            hh = self.act(xw[:, 2 * n:] + zr[:, n:] * inner[:, 2 * n:])
        else:
            zr = self.rec_act(xw[:, : 2 * n] + h @ self.wh_zr)
            hh = self.act(xw[:, 2 * n:] + (zr[:, n:] * h) @ self.wh_h)
        z = zr[:, :n]
        h[...] = z * h + (np.float32(1.0) - z) * hh
        return h


# -- per-tick layers ----------------------------------------------------------------


@dataclass(frozen=True)
class PerTick:
    """A layer that maps each tick's vector on its own.

    kind "dense" (kernel (F, K), bias (K,) or None, activation), "layer_norm" (gamma, beta
    each (F,) or None, epsilon), "activation" (activation), "identity" (Dropout at inference);
    "keras": a per-tick layer only Keras computes (``keras``: its class, config and variables as the
    model file holds them; ``why``: the kernel's one-line refusal; ``out_width``), served by the Keras engine.
    """

    kind: str
    name: str
    kernel: Array | None = None
    bias: Array | None = None
    activation: str = "linear"
    gamma: Array | None = None
    beta: Array | None = None
    epsilon: float = 1e-3
    keras: Any = None  # operators.keras_file.KerasLayer, for kind "keras"
    why: str = ""
    out_width: int | None = None

    def width(self, n_in: int) -> int:
        if self.kind == "keras":
            return int(self.out_width)
        return self.kernel.shape[1] if self.kind == "dense" else n_in

    def arrays(self) -> tuple[Array, ...]:
        if self.kind == "keras":
            return tuple(self.keras.weights)
        return tuple(a for a in (self.kernel, self.bias, self.gamma, self.beta) if a is not None)

    def describe(self) -> dict:
        d: dict = {"kind": self.kind, "name": self.name}
        if self.kind == "keras":
            d |= {"class_name": self.keras.class_name, "width": int(self.out_width), "config": self.keras.config}
        elif self.kind == "dense":
            d |= {"units": int(self.kernel.shape[1]), "activation": self.activation, "use_bias": self.bias is not None}
        elif self.kind == "activation":
            d["activation"] = self.activation
        elif self.kind == "layer_norm":
            d |= {"epsilon": float(self.epsilon), "scale": self.gamma is not None, "center": self.beta is not None}
        return d

    def apply(self, x: Array) -> Array:
        """(T, F) float32 -> (T, width) float32."""
        if self.kind == "keras":
            raise RuntimeError(f"the NumPy kernel does not compute {self.keras.class_name}: {self.why}")
        if self.kind == "identity":
            return x
        if self.kind == "activation":
            return activation(self.activation)(x)
        if self.kind == "dense":
            y = x @ np.asarray(self.kernel, dtype=np.float32)
            if self.bias is not None:
                y += np.asarray(self.bias, dtype=np.float32)
            return activation(self.activation)(y)
        mean = x.mean(axis=-1, keepdims=True)
        centred = x - mean
        var = np.square(centred).mean(axis=-1, keepdims=True)
        y = centred / np.sqrt(var + np.float32(self.epsilon))
        if self.gamma is not None:
            y = y * self.gamma
        if self.beta is not None:
            y = y + self.beta
        return y.astype(np.float32, copy=False)


Layer = Recurrent | PerTick


@dataclass(frozen=True)
class Stack:
    """A servable chain of layers, input features first."""

    layers: tuple[Layer, ...]
    n_inputs: int

    @property
    def recurrent(self) -> tuple[Recurrent, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, Recurrent))

    @property
    def outputs(self) -> int:
        width = self.n_inputs
        for layer in self.layers:
            width = layer.units if isinstance(layer, Recurrent) else layer.width(width)
        return width

    @property
    def state_vectors(self) -> tuple[tuple[str, int], ...]:
        """(column name, width) of every state vector, in order: h0, c0 (LSTM), h1 (GRU), ..."""
        return tuple((f"{s}{i}", layer.units) for i, layer in enumerate(self.recurrent) for s in layer.state_names)

    def arrays(self) -> list[Array]:
        return [a for layer in self.layers for a in layer.arrays()]

    def describe(self) -> list[dict]:
        return [layer.describe() for layer in self.layers]
