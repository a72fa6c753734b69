"""The Keras engine: a bundle's chain stepped by Keras itself, for models with layers the kernel lacks.

The chain (:attr:`operators.bundle.Bundle.stack`) is rebuilt as one functional Keras model from the
bundle's ``model.keras`` config (deserialised in safe mode: no code from the file runs; its HDF5 weights are
never opened in this process): every recurrent layer is a
copy with ``return_sequences=True, return_state=True`` that takes its initial states as inputs and
returns its final states; per-tick layers are copies of the model's own (an ``axis`` of the feature axis
written as -1, so a layer after a sequence-to-one recurrent layer applies to every tick;
``TimeDistributed(layer)`` as its per-tick inner layer, which acts on the last axis); identity layers
(Dropout, noise) are left out, as at inference. The variables are the chain's own arrays (read by
:mod:`operators.keras_file` and hashed into the model version), so what runs is what the version names.

Per micro-batch (the forecaster's seam, :class:`operators.engines.Stepper`): each instrument's ticks are
one segment, split where a session reset zeroes the state (a segment after a reset starts from zeros);
segments are bucketed by their exact length, and each bucket is one call of the compiled model
(``tf.function`` with a signature free in batch and time: traced once) on (segments, length, features)
with the gathered initial states. Exact lengths: no padding, no masking, so every segment is computed as
Keras computes that sequence alone from that state. Outputs go back to tick order, the final state of each
instrument's last segment back to its row.
"""

from __future__ import annotations

import numpy as np

from operators.layers import PerTick, Recurrent

_AXIS_CLASSES = ("BatchNormalization", "LayerNormalization", "UnitNormalization", "Softmax")


class KerasEngine:
    """Steps ragged per-instrument sequences through the bundle's model, run by Keras."""

    def __init__(self, bundle, why: str = ""):
        from operators.bundle import MODEL_FILE, _keras, keras_model_from_config  # noqa: PLC0415

        needed = 'engine = "keras"' + (f" ({why})" if why else "")
        keras = _keras(needed)
        import tensorflow as tf  # noqa: PLC0415

        model = bundle.keras_model
        if model is None:
            if bundle.path is None:
                raise ValueError("the Keras engine needs the bundle's Keras model or its directory")
            model = keras_model_from_config(bundle.path / MODEL_FILE, needed)
        stack = bundle.stack
        self.outputs = stack.outputs
        self.state_vectors = stack.state_vectors
        x_in = keras.Input((None, stack.n_inputs), name="ticks")
        state_in = [keras.Input((w,), name=f"in_{name}") for name, w in stack.state_vectors]
        x, finals, k = x_in, [], 0
        for layer in stack.layers:
            source = model.get_layer(layer.name)
            if isinstance(layer, Recurrent):
                config = source.get_config() | {"return_sequences": True, "return_state": True, "stateful": False,
                                                "name": f"{layer.name}_stepped"}
                copy = source.__class__.from_config(config)
                n = len(layer.state_names)
                x, *final = copy(x, initial_state=state_in[k: k + n])
                finals += final
                k += n
            elif isinstance(layer, PerTick) and layer.kind == "identity":
                continue
            else:
                if source.__class__.__name__ == "TimeDistributed":
                    # Its inner layer acts on the last axis, the same at every tick; TimeDistributed itself
                    # mishandles a time axis of unknown length inside tf.function.
                    source = source.layer
                config = source.get_config() | {"name": f"{layer.name}_stepped"}
                if source.__class__.__name__ in _AXIS_CLASSES:
                    config["axis"] = -1  # checked to be the feature axis (operators.keras_chain)
                if source.__class__.__name__ == "PReLU":
                    config["shared_axes"] = [1]  # checked: one slope vector for every tick
                copy = source.__class__.from_config(config)
                x = copy(x)
            weights = list(layer.arrays())
            if len(weights) != len(copy.weights):
                raise ValueError(f"layer {layer.name}: its copy has {len(copy.weights)} variables, not {len(weights)}")
            copy.set_weights([np.reshape(w, tuple(v.shape)) for w, v in zip(weights, copy.weights)])
        self.model = keras.Model([x_in, *state_in], [x, *finals])
        signature = [tf.TensorSpec([None, None, stack.n_inputs], tf.float32)]
        signature += [tf.TensorSpec([None, w], tf.float32) for _, w in stack.state_vectors]
        net = self.model

        @tf.function(input_signature=signature)
        def call(x, *states):
            return net([x, *states], training=False)

        self._call = call
        self.calls = 0  # compiled calls made (one per bucket of each batch)

    def step(self, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray], reset: np.ndarray | None = None,
             in_place: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """As :meth:`operators.lstm.RaggedLSTM.step`: (y (T, K) float32 after each tick, final state vectors)."""
        del in_place  # the final states are fresh arrays either way
        lengths = np.asarray(lengths, dtype=np.int64)
        total = int(lengths.sum())
        if len(lengths) == 0 or total == 0:
            return np.zeros((0, self.outputs), np.float32), [np.array(a, copy=True) for a in states]
        group_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        seg_starts = group_starts
        if reset is not None and reset.any():
            seg_starts = np.union1d(group_starts, np.flatnonzero(reset))
        seg_group = np.searchsorted(group_starts, seg_starts, side="right") - 1
        seg_len = np.diff(np.append(seg_starts, total))
        zero = reset[seg_starts] if reset is not None else np.zeros(len(seg_starts), bool)
        initial = []
        for a in states:
            s0 = np.asarray(a, dtype=np.float32)[seg_group]
            s0[zero] = 0.0
            initial.append(s0)
        x = np.asarray(x, dtype=np.float32)
        y = np.empty((total, self.outputs), np.float32)
        final = [np.empty_like(s0) for s0 in initial]
        by_len = np.argsort(seg_len, kind="stable")
        bounds = np.flatnonzero(np.diff(seg_len[by_len], prepend=-1))
        for lo, hi in zip(bounds.tolist(), [*bounds[1:].tolist(), len(by_len)]):
            segs = by_len[lo:hi]
            k = int(seg_len[segs[0]])
            ticks = seg_starts[segs][:, None] + np.arange(k)
            out = self._call(x[ticks], *[s0[segs] for s0 in initial])
            self.calls += 1
            y[ticks] = np.asarray(out[0]).reshape(len(segs), k, self.outputs)
            for f, o in zip(final, out[1:]):
                f[segs] = np.asarray(o)
        last = np.searchsorted(seg_starts, group_starts + lengths - 1, side="right") - 1  # each group's last segment
        return y, [f[last] for f in final]
