"""The embedded broker and `tickcast replay`, checked with an independent client (confluent-kafka).

Debian's kcat (librdkafka 2.0) cannot talk to the embedded broker: it fails to
parse Tansu 0.6's ApiVersions v3 response ("Read underflow"), and
api.version.request=false does not help; confluent-kafka's newer librdkafka works.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.files.sinks import write_parquet
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import EmbeddedBroker, create_topics
from tests.support.live import ENV
from tests.support.readers import read_all


def test_embedded_broker_starts_on_a_free_port_and_stops():
    broker = EmbeddedBroker()
    address = broker.start()
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=2):
        pass
    create_topics(address, {"probe": 3})
    broker.stop()
    assert broker.proc.poll() is not None
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()
    broker.stop()  # idempotent


def test_replay_publishes_keyed_ticks_with_event_time_timestamps(kafka_bootstrap, topic_factory, tmp_path):
    topic = topic_factory(partitions=2)
    ticks = generate_ticks(6, 500, seed=4, bad_fraction=0.0)
    write_parquet(ticks, tmp_path / "t.parquet")
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "replay", "--input", str(tmp_path / "t.parquet"),
                          "--topic", topic, "--bootstrap-servers", kafka_bootstrap, "--speed", "0", "--quiet"],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "500 ticks published" in out.stdout
    got = read_all(kafka_bootstrap, topic, 2, expected=500)
    assert len(got) == 500
    rows = {(r["instrument"], r["ts"]): r for r in ticks.to_pylist()}
    per_instrument_partition: dict[str, set] = {}
    for m in got:
        body = json.loads(m.value())
        assert m.key().decode() == body["instrument"] and body["v"] == 1
        assert m.timestamp()[1] == body["ts"] // 1_000_000
        assert rows[(body["instrument"], body["ts"])]["price"] == body["price"]
        per_instrument_partition.setdefault(body["instrument"], set()).add(m.partition())
    assert all(len(p) == 1 for p in per_instrument_partition.values()), "an instrument stays on one partition"


def test_a_benchmark_stopped_with_sigterm_stops_its_own_broker():
    """`tickcast bench e2e` starts an embedded broker; a SIGTERM (a CI timeout, `kill`) must not leave it
    running with the benchmark's backlog in memory."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "bench", "e2e", "--quick"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        seen = ""
        while (found := re.search(r"broker (127\.0\.0\.1):(\d+)", seen)) is None:
            line = proc.stdout.readline()
            assert line, f"the benchmark ended before naming its broker: {seen[-2000:]}"
            seen += line
        host, port = found.group(1), int(found.group(2))
        socket.create_connection((host, port), timeout=2).close()  # the broker is up
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            break  # refused: the broker is gone
        assert time.monotonic() < deadline, "the benchmark's broker outlived the benchmark"
        time.sleep(0.2)


def test_a_sigterm_that_lands_in_a_finalizer_still_ends_the_benchmark_and_its_broker():
    """A garbage collection runs finalizers (kafka-python's producer closes itself in ``__del__``); an exception
    raised by a signal handler there is printed and dropped, so the benchmark's SIGTERM handler must not rely
    on one propagating. Here the signal arrives inside a finalizer, deterministically."""
    script = """
import gc, os, signal, sys, time
from pipeline.cli import _exit_on_sigterm
from pipeline.kafka.broker import EmbeddedBroker
broker = EmbeddedBroker()
print(broker.start(), flush=True)
signal.signal(signal.SIGTERM, _exit_on_sigterm)
class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)  # the handler runs in here
cycle = Finalized()
cycle.me = cycle
del cycle
gc.collect()
time.sleep(30)  # where a dropped SystemExit would leave the process
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    try:
        host, port = proc.stdout.readline().strip().rsplit(":", 1)
        assert proc.wait(timeout=15) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()
