"""The bucketed ONNX Runtime peer of ``tickcast bench operator``.

The bucketed-Keras peer (:class:`benchmarks.peers.BucketedKeras`) is slow because of TensorFlow's cost
per call, not because bucketing is. This peer keeps its grouping, features and buckets
(:class:`benchmarks.peers.BucketedPeer`) and runs each bucket with one ``InferenceSession.run`` of an ONNX
graph built with ``onnx.helper`` from the same Keras weights: input (instruments, k, features) ->
``Transpose`` to time-major -> one ONNX ``LSTM`` per layer with ``initial_h``/``initial_c`` -> ``MatMul`` +
``Add`` head; the outputs are the head's (k, instruments, 1) forecasts and each layer's ``Y_h``/``Y_c``.
ONNX Runtime's CPU LSTM loops over time in C++ with MLAS GEMMs: what a production engineer would serve
with instead of writing an operator. Needs the ``bench`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import numpy as np

from benchmarks.peers import BucketedPeer
from operators.bundle import Bundle
from operators.lstm import LSTMWeights

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: any onnxruntime that runs the opset loads it


def onnx_gates(matrix: np.ndarray, hidden: int) -> np.ndarray:
    """Keras' gate blocks i, f, c, o (the last axis) in ONNX's order i, o, f, c."""
    i, f, c, o = (matrix[..., k * hidden:(k + 1) * hidden] for k in range(4))
    return np.concatenate([i, o, f, c], axis=-1)


def lstm_graph(weights: LSTMWeights):
    """The ONNX model of the stacked LSTM + Dense(1) head, from the operator's (Keras') weights.

    Inputs: ``x`` (instruments, k, features) float32, and per layer l ``h{l}``, ``c{l}`` (1, instruments,
    hidden). Outputs: ``y`` (k, instruments, 1), then ``h{l}_out``, ``c{l}_out`` (1, instruments, hidden).
    W, R and B in ONNX's layout: W (1, 4H, features), R (1, 4H, H), B (1, 8H) = [Wb, Rb] with the Keras bias
    in Wb and zeros in Rb (ONNX adds both)."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    hidden, n_in = weights.hidden, weights.n_inputs
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("x", f32, ["n", "k", n_in])]
    outputs = [helper.make_tensor_value_info("y", f32, ["k", "n", 1])]
    nodes = [helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2])]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    layer_in = "x_tm"
    for l, lw in enumerate(weights.layers):
        w = onnx_gates(np.asarray(lw.kernel, np.float32), hidden).T[None]
        r = onnx_gates(np.asarray(lw.recurrent, np.float32), hidden).T[None]
        b = np.concatenate([onnx_gates(np.asarray(lw.bias, np.float32), hidden), np.zeros(4 * hidden, np.float32)])
        inits += [numpy_helper.from_array(np.ascontiguousarray(w), f"W{l}"),
                  numpy_helper.from_array(np.ascontiguousarray(r), f"R{l}"),
                  numpy_helper.from_array(b[None], f"B{l}")]
        inputs += [helper.make_tensor_value_info(f"h{l}", f32, [1, "n", hidden]),
                   helper.make_tensor_value_info(f"c{l}", f32, [1, "n", hidden])]
        outputs += [helper.make_tensor_value_info(f"h{l}_out", f32, [1, "n", hidden]),
                    helper.make_tensor_value_info(f"c{l}_out", f32, [1, "n", hidden])]
        # Y (k, 1, n, H) -> (k, n, H): the next layer's input, or the head's
        nodes += [helper.make_node("LSTM", [layer_in, f"W{l}", f"R{l}", f"B{l}", "", f"h{l}", f"c{l}"],
                                   [f"Y{l}", f"h{l}_out", f"c{l}_out"], hidden_size=hidden),
                  helper.make_node("Squeeze", [f"Y{l}", "axis1"], [f"seq{l}"])]
        layer_in = f"seq{l}"
    inits += [numpy_helper.from_array(np.asarray(weights.dense_kernel, np.float32).reshape(hidden, 1), "Wd"),
              numpy_helper.from_array(np.array([weights.dense_bias], np.float32), "Bd")]
    nodes += [helper.make_node("MatMul", [layer_in, "Wd"], ["yd"]), helper.make_node("Add", ["yd", "Bd"], ["y"])]
    graph = helper.make_graph(nodes, "tickcast_lstm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tickcast")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def session(model, threads: int = 1):
    """An ONNX Runtime CPU session of ``model`` on ``threads`` intra-op threads (all graph optimisations)."""
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class BucketedOnnx(BucketedPeer):
    """The bucketed peer with each bucket run by one ONNX Runtime ``InferenceSession.run``
    (``threads``: its intra-op threads, 1 by default as the operator's GEMMs)."""

    def __init__(self, bundle: Bundle, capacity: int = 1024, threads: int = 1):
        super().__init__(bundle, capacity)
        if bundle.weights is None:
            raise ValueError("the ONNX Runtime peer serves the built-in stacked LSTM + Dense(1) only")
        self.threads = threads
        self._session = session(lstm_graph(bundle.weights), threads)
        self._outputs = ["y"] + [f"{v}{l}_out" for l in range(self.layers) for v in ("h", "c")]

    def run_bucket(self, x, h, c):
        feed = {"x": x}
        for l in range(self.layers):
            feed[f"h{l}"] = h[l][None]
            feed[f"c{l}"] = c[l][None]
        out = self._session.run(self._outputs, feed)
        return out[0][:, :, 0].T, [o[0] for o in out[1::2]], [o[0] for o in out[2::2]]
