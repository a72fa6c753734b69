"""Getting a batch's output out and its input offsets committed, in two halves so the loop can step the next
batch in between (``inflight``): two strategies behind one interface, chosen once by ``processing``.

- ``dispatch(outbox) -> pending``: start the batch's delivery without waiting (None: it failed at once, the
  state was rewound to the committed offsets and the batch comes again);
- ``settle(outbox, pending) -> bool``: finish it, oldest batch first (False: it failed, the state was rewound,
  every batch in flight is to be dropped);
- ``pending.acknowledged()``: whether ``settle`` would not wait;
- ``revoke(inflight, partitions) -> bool``: what a revoke does to the batches in flight (True: every one of
  them is committed now);
- ``depth``: the batches in flight it allows (``max_batches_in_flight``, or fewer).

``AtLeastOnce`` (``pipeline.live.at_least_once``): sends, then flush, acknowledgements and the offsets'
commit. ``ExactlyOnce`` (``pipeline.live.exactly_once``): one Kafka transaction per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from pipeline.config import RunConfig
from pipeline.live.at_least_once import AtLeastOnce
from pipeline.kafka.clients import KafkaClients
from pipeline.live.clients import CachingPartitioner, Connection, StallWatch
from pipeline.live.exactly_once import ExactlyOnce
from pipeline.live.inflight import InFlight, Outbox, Pending
from pipeline.live.sender import Sender
from pipeline.live.stopping import Stopping
from pipeline.metrics import Metrics


class DeliveryStrategy(Protocol):
    sender: Sender
    depth: int

    def dispatch(self, outbox: Outbox) -> Pending | None: ...

    def settle(self, outbox: Outbox, pending: Pending) -> bool: ...

    def revoke(self, inflight: InFlight, partitions: Iterable) -> bool: ...

    def close(self) -> None: ...


def open_delivery(cfg: RunConfig, conn: Connection, clients: KafkaClients, partitioner: CachingPartitioner,
                  metrics: Metrics, stopping: Stopping, stall: StallWatch,
                  rewind: Callable[[], None]) -> DeliveryStrategy:
    """The strategy ``cfg.processing`` asks for. ``rewind``: back to the committed offsets (exactly-once)."""
    sender = Sender(cfg, conn, metrics, stopping)
    if cfg.processing == "exactly_once":
        return ExactlyOnce(cfg, conn, clients, partitioner, metrics, stopping, stall, sender, rewind)
    return AtLeastOnce(cfg, conn, metrics, stopping, stall, sender)
