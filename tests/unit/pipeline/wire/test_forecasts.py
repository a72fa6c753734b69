"""Forecast messages: schema v1 for a model with one output (bytes as documented), v2 with named outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.wire.forecasts import JsonNames, decode_forecast_message, encode_arrow, encode_json
from pipeline.wire.schemas import FORECAST_MESSAGE_SCHEMA
from pipeline.wire.ticks import PARTITION_MASK, TOPIC_SHIFT

TOPICS = ["ticks-a", "ticks-b"]


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ticks = pa.table({"instrument": pa.array([f"I{i % 3}" for i in range(n)]),
                      "ts": pa.array(np.arange(n, dtype=np.int64) * 1_000_000 + 17)})
    rows = np.arange(n)
    msg_index = rows.copy()
    part_ids = (rng.integers(0, 2, n).astype(np.int64) << TOPIC_SHIFT) | rng.integers(0, 4, n)
    offs = rng.integers(0, 10**9, n)
    return ticks, rows, msg_index, part_ids, offs, rng


def _arrow(bundle, ticks, rows, forecasts, msg_index, part_ids, offs):
    return encode_arrow(bundle, TOPICS, "out", [0], lambda topic, key, parts: 0, ticks, rows, forecasts, msg_index,
                        part_ids, offs)


def test_one_output_json_is_schema_v1_byte_for_byte(bundle):
    ticks, rows, msg_index, part_ids, offs, _ = _batch(2)
    part_ids[:] = [0, (1 << TOPIC_SHIFT) | 3]
    offs[:] = [5, 6]
    msgs = encode_json(bundle, JsonNames(), "out", ticks, rows, np.array([0.25, -1.5e-05]), msg_index, TOPICS,
                       part_ids, offs)  # record 0 read from ticks-a, record 1 from ticks-b
    v = bundle.model_version
    assert [m.value for m in msgs] == [
        f'{{"v":1,"model_version":"{v}","horizon_ticks":5,"instrument":"I0","ts":17,"forecast":0.25,'
        f'"topic":"ticks-a","partition":0,"offset":5}}'.encode(),
        f'{{"v":1,"model_version":"{v}","horizon_ticks":5,"instrument":"I1","ts":1000017,"forecast":-1.5e-05,'
        f'"topic":"ticks-b","partition":3,"offset":6}}'.encode()]
    assert [m.key for m in msgs] == [b"I0", b"I1"]
    assert [(m.topic, m.partition, m.headers) for m in msgs] == [("out", None, None)] * 2, "partitioned by key"


def test_one_output_arrow_keeps_the_v1_schema_and_metadata(bundle):
    ticks, rows, msg_index, part_ids, offs, rng = _batch(50)
    (msg,) = _arrow(bundle, ticks, rows, rng.normal(size=50), msg_index, part_ids, offs)
    table = decode_forecast_message(msg.value)
    assert table.schema.remove_metadata() == FORECAST_MESSAGE_SCHEMA
    assert table.schema.metadata == {b"v": b"1", b"model_version": bundle.model_version.encode(),
                                     b"horizon_ticks": b"5"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_several_outputs_json_is_schema_v2_with_every_output_by_name(multi_bundle, seed):
    n = 40
    ticks, rows, msg_index, part_ids, offs, rng = _batch(n, seed)
    forecasts = rng.normal(0, 1e-3, (n, multi_bundle.outputs)) * 10.0 ** rng.integers(-8, 3, (n, 1))
    topics = [TOPICS[p >> TOPIC_SHIFT] for p in part_ids.tolist()]  # the topic of each record read
    msgs = encode_json(multi_bundle, JsonNames(), "out", ticks, rows, forecasts, msg_index, topics, part_ids, offs)
    names = [o.name for o in multi_bundle.output_list]
    for i, m in enumerate(msgs):
        body = json.loads(m.value)
        assert body["v"] == 2 and body["model_version"] == multi_bundle.model_version
        assert list(body["forecasts"]) == names  # in the model's output order
        assert [body["forecasts"][k] for k in names] == forecasts[i].tolist()  # the same numbers, exactly
        assert (body["instrument"], body["ts"], body["offset"]) == (f"I{i % 3}", i * 1_000_000 + 17, offs[i])
        assert body["topic"] == TOPICS[part_ids[i] >> TOPIC_SHIFT] and body["partition"] == part_ids[i] & PARTITION_MASK
        assert "forecast" not in body and "horizon_ticks" not in body


def test_several_outputs_arrow_has_a_column_per_output_and_their_meanings(multi_bundle):
    n = 60
    ticks, rows, msg_index, part_ids, offs, rng = _batch(n)
    forecasts = rng.normal(size=(n, multi_bundle.outputs))
    (msg,) = _arrow(multi_bundle, ticks, rows, forecasts, msg_index, part_ids, offs)
    table = decode_forecast_message(msg.value)
    names = [o.name for o in multi_bundle.output_list]
    assert table.column_names == ["instrument", "ts", *(f"forecast_{k}" for k in names), "topic", "partition",
                                  "offset"]
    for k, name in enumerate(names):
        np.testing.assert_array_equal(table.column(f"forecast_{name}").to_numpy(), forecasts[:, k])
    meta = table.schema.metadata
    assert meta[b"v"] == b"2" and meta[b"model_version"] == multi_bundle.model_version.encode()
    assert json.loads(meta[b"outputs"]) == [o.to_dict() for o in multi_bundle.output_list]


def test_a_forecast_message_that_breaks_arrows_invariants_is_refused_when_decoded():
    """An Arrow stream whose instrument offsets point past their data reads without complaint; decoding it
    must refuse it, not hand a reader a table whose first compute call reads out of bounds."""
    names = pa.array(["AAA", "BBB"])
    offsets = np.array([0, 1 << 30, 6], dtype=np.int32)  # the span (first to last) still fits the data
    bad = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(offsets.tobytes()), names.buffers()[2]])
    sink = pa.BufferOutputStream()
    table = pa.table({"instrument": bad, "forecast": [0.1, 0.2]})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(pa.ArrowInvalid, match="offset"):
        decode_forecast_message(sink.getvalue().to_pybytes())
