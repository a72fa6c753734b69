"""Where a command's ticks come from: the one-of check, the --from/--to cut of a file, the input's name."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, parse_time_ns
from pipeline.inputs import TickInput, load_ticks

DAY = 86_400_000_000_000
T0 = parse_time_ns("2013-10-09", "--from")


@pytest.fixture
def ticks_file(tmp_path):
    t = pa.table({"instrument": ["A", "A", "B"], "ts": pa.array([T0 - DAY, T0, T0 + DAY], pa.int64()),
                  "price": [1.0, 2.0, 3.0], "size": [1.0, 1.0, 1.0]})
    pq.write_table(t, tmp_path / "t.parquet")
    return str(tmp_path / "t.parquet")


def test_exactly_one_of_file_and_topic(ticks_file):
    for source in (TickInput(), TickInput(path=ticks_file, topic="ticks")):
        with pytest.raises(ConfigError, match="exactly one of --input FILE and --topic TOPIC"):
            load_ticks(source)


def test_from_is_inclusive_to_is_exclusive(ticks_file):
    got = load_ticks(TickInput(path=ticks_file, time_from="2013-10-09", time_to="2013-10-10"))
    assert got.ticks.column("price").to_pylist() == [2.0] and got.undecodable is None
    assert load_ticks(TickInput(path=ticks_file)).ticks.num_rows == 3


def test_an_empty_range_and_a_bad_time_are_one_line_errors(ticks_file):
    with pytest.raises(ConfigError, match="widen the range"):
        load_ticks(TickInput(path=ticks_file, time_from="2020-01-01"))
    with pytest.raises(ConfigError, match="ISO 8601"):
        load_ticks(TickInput(path=ticks_file, time_to="tomorrow"))


def test_name_is_the_path_or_the_topic_with_its_range():
    assert TickInput(path="a.parquet", time_from="2013-10-09").name(with_range=True) == "a.parquet"
    topic = TickInput(topic="ticks", bootstrap_servers="k:9092", time_from="2013-10-09")
    assert topic.name() == "kafka://k:9092/ticks"
    assert topic.name(with_range=True) == "kafka://k:9092/ticks[2013-10-09, )"


def test_a_topic_reads_refuse_an_unknown_kafka_client_in_one_line_before_connecting():
    with pytest.raises(ConfigError, match="--kafka-client 'rdkafka' is not one of 'kafka-python', 'confluent'") as bad:
        load_ticks(TickInput(topic="ticks", bootstrap_servers="127.0.0.1:1", kafka_client="rdkafka", quiet=True))
    assert "\n" not in str(bad.value)
