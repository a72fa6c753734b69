"""How a run ends: a requested stop (with its shutdown deadline), or a fatal error; the two exceptions.

The shutdown budget: every step after a stop request has a deadline, and the last one is the request time
plus ``shutdown_timeout_s``, whatever the broker or the store does. In order, each step's share:

1. ``drain``: flush and commit the batches in flight (half);
2. ``checkpoint``: the shutdown checkpoint (three tenths); a write still running at its deadline is
   abandoned (the previous checkpoint stays the one a restart restores: temp files, manifest last);
3. ``close``: leave the group and close the consumer, then the producer (the last fifth).

A step's deadline is the sum of the shares up to it, so time a step leaves unused goes to the ones after it.
"""

from __future__ import annotations

import threading
import time

from pipeline import logs

log = logs.get("run")


class FatalError(Exception):
    """The run cannot go on (fenced producer, incompatible checkpoint); the message says why."""


class PublishTimeout(Exception):
    """Forecasts could not be acknowledged before shutdown gave up."""


SHUTDOWN_STEPS = (("drain", 0.5), ("checkpoint", 0.3), ("close", 0.2))


class Stopping:
    """The stop flag every wait of the loop watches, when the stop was asked, and a fatal reason found on
    a side path (a restore) for the loop to raise."""

    def __init__(self, shutdown_timeout_s: float):
        self.event = threading.Event()
        self.requested_at: float | None = None
        self.fatal: str | None = None
        self.shutdown_timeout_s = shutdown_timeout_s

    def request(self) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            log.info("stop requested; finishing the current batch")
        self.event.set()

    def fail(self, reason: str) -> None:
        """Stop because the run cannot go on; the loop raises ``FatalError(reason)``."""
        self.fatal = reason
        self.event.set()

    def begin_shutdown(self) -> None:
        """The shutdown clock starts now if no stop request started it (a fatal error, a failed publish)."""
        if self.requested_at is None:
            self.requested_at = time.monotonic()

    def deadline(self, step: str) -> float:
        """The monotonic time by which ``step`` of :data:`SHUTDOWN_STEPS` must end (the clock must run)."""
        share = 0.0
        for name, part in SHUTDOWN_STEPS:
            share += part
            if name == step:
                return self.requested_at + share * self.shutdown_timeout_s
        raise KeyError(step)

    def drain_deadline(self) -> float | None:
        """The flush's deadline (``drain``) once a stop was requested or the shutdown began; None before: the
        deadline of the waits that go on after a stop request (``pipeline.waiting``)."""
        return None if self.requested_at is None else self.deadline("drain")

    def past_deadline(self) -> bool:
        """A stop was requested and the flush of the batches in flight is past its deadline (``drain``)."""
        return self.requested_at is not None and time.monotonic() > self.deadline("drain")

    def cap_s(self, limit_s: float) -> float:
        """A broker wait of ``limit_s`` seconds, cut to what is left of the flush (``drain``) once a stop was
        requested: no single call outlasts its step."""
        if self.requested_at is None or not self.event.is_set():
            return limit_s
        return max(0.0, min(limit_s, self.deadline("drain") - time.monotonic()))

    def give_up_if_past_deadline(self, what: str) -> None:
        if self.past_deadline():
            raise PublishTimeout(what)
