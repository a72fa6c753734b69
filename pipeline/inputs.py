"""Where a command's ticks come from: a tick file, or a time range of a Kafka topic.

``train``, ``backtest``, ``walkforward`` and ``replay`` read their input the
same way: one :class:`TickInput` (what the ``--input``/``--topic`` flags say)
and :func:`load_ticks`. A file goes through :func:`pipeline.files.formats.read_ticks`
and is cut to ``--from``/``--to``; a topic is read by
:func:`pipeline.kafka.topics.load_topic_range`, whose undecodable messages come back
beside the ticks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import ConfigError, parse_mapping, parse_time_ns

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class TickInput:
    """A file (with its format options) or a topic (with its broker); ``--from``/``--to`` for either."""

    path: str | None = None
    topic: str | None = None
    bootstrap_servers: str = "localhost:9092"
    kafka_client: str = "kafka-python"  # the client library reading a topic: kafka-python or confluent
    format: str = "auto"
    mapping: str | None = None  # the --map text: canonical=source,...
    instrument: str | None = None
    price_scale: float = 1.0
    ts_unit: str = "ns"
    time_from: str | None = None
    time_to: str | None = None
    quiet: bool = False  # no progress bar while reading a topic

    def name(self, with_range: bool = False) -> str:
        """How reports and bundles name this input: the path, or ``kafka://servers/topic[from, to)``."""
        if self.path:
            return str(self.path)
        name = f"kafka://{self.bootstrap_servers}/{self.topic}"
        if with_range and (self.time_from or self.time_to):
            name += f"[{self.time_from or ''}, {self.time_to or ''})"
        return name


@dataclass(frozen=True)
class LoadedTicks:
    ticks: pa.Table  # canonical tick columns (a topic's also carry partition and offset)
    undecodable: pa.Table | None = None  # a topic's messages that are not ticks: partition, offset, reason, detail


def load_ticks(source: TickInput) -> LoadedTicks:
    """The ticks ``source`` names; ConfigError when it names none or both, or the range holds nothing."""
    if (source.path is None) == (source.topic is None):
        raise ConfigError("give exactly one of --input FILE and --topic TOPIC")
    if source.topic is not None:
        from pipeline.kafka.topics import load_topic_range  # noqa: PLC0415 - kafka only when a topic is read

        got = load_topic_range(source.bootstrap_servers, source.topic, source.time_from, source.time_to,
                               quiet=source.quiet, kafka_client=source.kafka_client)
        return LoadedTicks(got.ticks, got.rejected)
    return LoadedTicks(read_file(source))


def read_file(source: TickInput) -> pa.Table:
    """A tick file's canonical table, cut to ``--from``/``--to``."""
    import numpy as np  # noqa: PLC0415 - the CLI imports this module before it knows the command
    import pyarrow.compute as pc  # noqa: PLC0415

    from pipeline.files.formats import read_ticks  # noqa: PLC0415

    table = read_ticks(source.path, source.format, parse_mapping(source.mapping), instrument=source.instrument,
                       price_scale=source.price_scale, ts_unit=source.ts_unit)
    lo, hi = parse_time_ns(source.time_from, "--from"), parse_time_ns(source.time_to, "--to")
    if lo is not None or hi is not None:
        ts = table.column("ts")
        mask = pc.and_(pc.greater_equal(ts, lo if lo is not None else np.iinfo(np.int64).min),
                       pc.less(ts, hi if hi is not None else np.iinfo(np.int64).max))
        table = table.filter(pc.fill_null(mask, True))
    if table.num_rows == 0:
        raise ConfigError(f"no ticks in {source.path} for the given --from/--to; widen the range")
    return table
