"""How a run ends: a requested stop (with its shutdown deadline), or a fatal error; the two exceptions."""

from __future__ import annotations

import threading
import time

from pipeline import logs

log = logs.get("run")


class FatalError(Exception):
    """The run cannot go on (fenced producer, incompatible checkpoint); the message says why."""


class PublishTimeout(Exception):
    """Forecasts could not be acknowledged before shutdown gave up."""


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

    def past_deadline(self) -> bool:
        """A stop was requested longer ago than ``shutdown_timeout_s``."""
        return self.requested_at is not None and time.monotonic() - self.requested_at > self.shutdown_timeout_s

    def give_up_if_past_deadline(self, what: str) -> None:
        if self.past_deadline():
            raise PublishTimeout(what)
