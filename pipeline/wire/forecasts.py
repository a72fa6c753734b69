"""Forecast messages: JSON (one per forecast, keyed by instrument) or Arrow IPC (one per output partition,
at most ``ARROW_ROWS_PER_MESSAGE`` rows), and reading an Arrow one back.

The formats are documented in the README ("Output message (forecast)"); their Arrow schema is
``pipeline.wire.schemas.FORECAST_MESSAGE_SCHEMA``.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from operators.bundle import Bundle
from pipeline.wire.outgoing import Outgoing
from pipeline.wire.schemas import ARROW_CONTENT_TYPE, forecast_message_schema
from pipeline.wire.ticks import PARTITION_MASK, TOPIC_SHIFT

# Arrow output: rows per message, and bytes per message (a row is ~45 B plus its instrument name, at most
# the 256-byte key limit): every message stays far below the producer's 1 MiB max_request_size.
ARROW_ROWS_PER_MESSAGE = 8192
ARROW_MESSAGE_BYTES = 512 * 1024


class JsonNames:
    """Instrument name -> its JSON string literal, memoised for the forecast encoder.

    Bounded: ``forget`` drops the names the state table expires, and when the new
    names of a batch would take it past ``max_size`` it is cleared first (a hot
    set of instruments stays cached; a flood of one-off names costs a
    ``json.dumps`` each, not memory).
    """

    def __init__(self, max_size: int = 32_768):
        self.max_size = max_size
        self._cache: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def forget(self, names) -> None:
        """Drop these names (instruments the state table expired): the cache follows the live instruments."""
        cache = self._cache
        for nm in names:
            cache.pop(nm, None)

    def lookup(self, names: list[str]) -> dict[str, str]:
        """A mapping that holds every name of ``names``."""
        cache = self._cache
        new = set(names) - cache.keys()
        if len(cache) + len(new) > self.max_size:
            self._cache = cache = {}  # a fresh dict: a cleared one keeps its table size
            new = set(names)
        for nm in new:
            cache[nm] = json.dumps(nm)
        return cache


def encode_json(bundle: Bundle, json_names: JsonNames, topic: str, ticks: pa.Table, rows: np.ndarray,
                forecasts: np.ndarray, msg_index: np.ndarray, topics: list[str], part_ids: np.ndarray,
                offs: np.ndarray) -> list[Outgoing]:
    """One JSON message per forecast, keyed by instrument (the producer's partitioner places it)."""
    if len(rows) == 0:
        return []
    part = part_ids & PARTITION_MASK
    take = pa.array(rows)
    names = ticks.column("instrument").take(take).to_pylist()
    ts = ticks.column("ts").take(take).to_pylist()
    cache = json_names.lookup(names)
    quoted = {t: json.dumps(t) for t in set(topics)}  # a batch's records come from a few topics
    if forecasts.ndim == 2:
        return _encode_json_v2(bundle, topic, cache, names, ts, forecasts, msg_index, topics, quoted, part, offs)
    head = f'{{"v":1,"model_version":"{bundle.model_version}","horizon_ticks":{bundle.horizon},'
    return [
        Outgoing(topic, nm.encode(), f'{head}"instrument":{cache[nm]},"ts":{t},"forecast":{f!r},'
                                    f'"topic":{quoted[topics[m]]},"partition":{p},"offset":{o}}}'.encode(), None, None)
        for nm, t, f, m, p, o in zip(names, ts, forecasts.tolist(), msg_index.tolist(),
                                     part[msg_index].tolist(), offs[msg_index].tolist())
    ]


def _encode_json_v2(bundle: Bundle, topic: str, cache: dict[str, str], names: list[str], ts: list[int],
                    forecasts: np.ndarray, msg_index: np.ndarray, topics: list[str], quoted: dict[str, str],
                    part: np.ndarray, offs: np.ndarray) -> list[Outgoing]:
    """Schema v2 (several outputs per tick): ``"forecasts": {name: value, ...}`` in the model's output order."""
    head = f'{{"v":2,"model_version":"{bundle.model_version}",'
    keys = [json.dumps(o.name) + ":" for o in bundle.output_list]
    return [
        Outgoing(topic, nm.encode(), f'{head}"instrument":{cache[nm]},"ts":{t},"forecasts":{{'
                                    f'{",".join(k + repr(v) for k, v in zip(keys, f))}}},'
                                    f'"topic":{quoted[topics[m]]},"partition":{p},"offset":{o}}}'.encode(), None, None)
        for nm, t, f, m, p, o in zip(names, ts, forecasts.tolist(), msg_index.tolist(),
                                     part[msg_index].tolist(), offs[msg_index].tolist())
    ]


def encode_arrow(bundle: Bundle, input_topics: list[str], topic: str, partitions, of_key, ticks: pa.Table,
                 rows: np.ndarray, forecasts: np.ndarray, msg_index: np.ndarray, part_ids: np.ndarray,
                 offs: np.ndarray) -> list[Outgoing]:
    """The batch's forecasts as Arrow IPC streams, one message per output partition (at most
    ``ARROW_ROWS_PER_MESSAGE`` rows each). Each instrument's rows go to the partition its key would
    pick as a JSON message (``of_key``), so a reader of one partition sees the same instruments, in order,
    either way."""
    if len(rows) == 0:
        return []
    take = pa.array(rows)
    names = ticks.column("instrument").take(take).combine_chunks()
    enc = pc.dictionary_encode(names)
    p_of_name = np.array([of_key(topic, nm.encode(), partitions) for nm in enc.dictionary.to_pylist()],
                         dtype=np.int32)
    out_part = p_of_name[enc.indices.to_numpy(zero_copy_only=False)]
    src = part_ids[msg_index]
    several = forecasts.ndim == 2
    outputs = bundle.output_list
    table = pa.Table.from_arrays([
        names.cast(pa.string()),
        ticks.column("ts").take(take).cast(pa.int64()),
        *(pa.array(np.ascontiguousarray(c), type=pa.float64()) for c in (forecasts.T if several else [forecasts])),
        pa.DictionaryArray.from_arrays(pa.array(src >> TOPIC_SHIFT, type=pa.int32()),
                                       pa.array(input_topics, type=pa.string())),
        pa.array(src & PARTITION_MASK, type=pa.int32()),
        pa.array(offs[msg_index], type=pa.int64()),
    ], schema=forecast_message_schema([o.name for o in outputs] if several else None))  # the documented contract
    if several:
        meta = {"v": "2", "model_version": bundle.model_version,
                "outputs": json.dumps([o.to_dict() for o in outputs])}
    else:
        meta = {"v": "1", "model_version": bundle.model_version, "horizon_ticks": str(bundle.horizon)}
    headers = [("content-type", ARROW_CONTENT_TYPE)]
    # Rows per message so that no message can exceed ARROW_MESSAGE_BYTES, whatever the names' lengths.
    widest = 56 + 8 * (forecasts.shape[1] if several else 1) + int(pc.max(pc.binary_length(names)).as_py() or 0)
    per_message = max(1, min(ARROW_ROWS_PER_MESSAGE, ARROW_MESSAGE_BYTES // widest))
    out = []
    for p in np.unique(out_part).tolist():
        mine = table.filter(pa.array(out_part == p)) if len(partitions) > 1 else table
        for start in range(0, mine.num_rows, per_message):
            chunk = mine.slice(start, per_message)
            out.append(Outgoing(topic, None, encode_forecast_batch(chunk, meta), headers, p))
    return out


def encode_forecast_batch(table: pa.Table, metadata: dict[str, str]) -> bytes:
    """One forecast message: the rows of ``table`` (FORECAST_MESSAGE_SCHEMA) as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema.with_metadata(metadata)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_forecast_message(value: bytes) -> pa.Table:
    """The forecasts of one `output_format = "arrow"` message (metadata in ``table.schema.metadata``).
    Checked in full: bytes that read as Arrow but break its invariants raise ``pa.ArrowInvalid`` here rather
    than crash the reader's first compute call."""
    table = ipc.open_stream(value).read_all()
    table.validate(full=True)
    return table


def last_per_group(ticks: pa.Table, rows: np.ndarray) -> np.ndarray:
    """Positions in ``rows`` of the last tick of each (partition, instrument) (output_mode last_per_instrument)."""
    take = pa.array(rows)
    codes = ticks.column("instrument").take(take).combine_chunks().dictionary_encode().indices
    codes = codes.to_numpy(zero_copy_only=False).astype(np.int64)
    parts = ticks.column("partition").take(take).to_numpy().astype(np.int64)
    composite = parts * (int(codes.max()) + 1) + codes
    _, first_in_reversed = np.unique(composite[::-1], return_index=True)
    return np.sort(len(rows) - 1 - first_in_reversed)
