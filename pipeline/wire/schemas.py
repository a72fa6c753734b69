"""The Arrow schemas of tickcast's outputs: forecast files (Parquet, ``FORECAST_SCHEMA``), their rejects
(``REJECT_SCHEMA``) and forecast messages in Arrow IPC (``FORECAST_MESSAGE_SCHEMA``), each with a column per
output for a model with several outputs (schema v2).
"""

from __future__ import annotations

import pyarrow as pa

FORECAST_SCHEMA = pa.schema([
    pa.field("instrument", pa.string()),
    pa.field("ts", pa.int64()),  # event time of the tick, ns since the epoch (UTC)
    pa.field("seq", pa.int64()),  # 0-based row of the tick in the input
    pa.field("price", pa.float64()),
    pa.field("forecast", pa.float64()),  # log return over the next `horizon` ticks of the instrument
])
# A model with several outputs per tick (schema v2): one column per output, ``forecast_<name>``, in the model's
# output order, instead of ``forecast``.


def output_column(name: str) -> str:
    return f"forecast_{name}"


def forecast_schema(output_names: list[str] | None = None) -> pa.Schema:
    """FORECAST_SCHEMA (one output), or with a column per output for several."""
    return _with_outputs(FORECAST_SCHEMA, output_names)


def _with_outputs(schema: pa.Schema, output_names: list[str] | None) -> pa.Schema:
    if not output_names:
        return schema
    i = schema.get_field_index("forecast")
    schema = schema.remove(i)
    for j, name in enumerate(output_names):
        schema = schema.insert(i + j, pa.field(output_column(name), pa.float64()))
    return schema


REJECT_SCHEMA = pa.schema([
    pa.field("seq", pa.int64()),
    pa.field("reason", pa.string()),
])

# `output_format = "arrow"`: a message's value is an Arrow IPC stream of forecasts with this schema (its
# metadata carries v, model_version, horizon_ticks), announced by a `content-type` header. Schema v2 (a model with
# several outputs): a column per output instead of `forecast`; metadata v = "2", model_version, and outputs (JSON:
# each output's name, horizon, kind, quantile).
ARROW_CONTENT_TYPE = b"application/vnd.apache.arrow.stream"
FORECAST_MESSAGE_SCHEMA = pa.schema([
    pa.field("instrument", pa.string()),
    pa.field("ts", pa.int64()),  # event time of the tick, ns since the epoch (UTC)
    pa.field("forecast", pa.float64()),
    pa.field("topic", pa.dictionary(pa.int32(), pa.string())),  # where the tick was read
    pa.field("partition", pa.int32()),
    pa.field("offset", pa.int64()),
])


def forecast_message_schema(output_names: list[str] | None = None) -> pa.Schema:
    """FORECAST_MESSAGE_SCHEMA (v1), or v2's with a column per output."""
    return _with_outputs(FORECAST_MESSAGE_SCHEMA, output_names)
