"""The tests' topic readers: every record of a topic from the start, by a client independent of tickcast.

- ``read_all``: confluent-kafka (librdkafka), read_uncommitted unless told otherwise; until the topic is
  quiet, or until a number of records (or forecast rows, ...) has arrived.
- ``read_committed``: what a read_committed reader returns, decided from the transaction markers in the
  log itself (tests/support/txlog.py: the embedded broker's fetch does not filter aborted transactions).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from tests.support.txlog import read_committed

__all__ = ["read_all", "read_committed"]

FIRST_RECORD_S = 90.0  # the longest wait for the first record of a topic the broker says holds records


def read_all(bootstrap: str, topic: str, partitions: int = 1, *, expected: int | None = None,
             weight: Callable | None = None, timeout: float | None = None,
             isolation: str = "read_uncommitted") -> list:
    """Every record of ``topic`` (partitions 0..partitions-1, from offset 0), with no group commits.

    Without ``expected``: until no record has come for ``timeout`` s (10 by default), counted from the
    first record if the broker lists any. With it: until
    ``expected`` records have come (each counting ``weight(msg)``, 1 without ``weight``) or ``timeout`` s
    in all (90 by default).
    ``isolation`` is librdkafka's ``isolation.level``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "isolation.level": isolation})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    if timeout is None:
        timeout = 10.0 if expected is None else 90.0
    out, got = [], 0
    # Until quiet: the quiet time runs from the first record when the broker lists any (connecting and the
    # first fetch can take longer than ``timeout`` on a busy machine), else from now.
    first = expected is None and any(c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] > 0
                                     for p in range(partitions))
    start = idle_since = time.monotonic()
    try:
        while (got < expected and time.monotonic() - start < timeout if expected is not None
               else time.monotonic() - start < FIRST_RECORD_S if first
               else time.monotonic() - idle_since < timeout):
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            first = False
            out.append(msg)
            got += 1 if weight is None else weight(msg)
            idle_since = time.monotonic()
    finally:
        c.close()
    return out
