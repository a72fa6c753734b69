"""Every wait of the runtime and of the client adapters: a retry with backoff, a sleep that a stop ends,
a call bounded in time.

- ``retry(attempt, on_error, ...)``: ``attempt()`` until it returns. A failure that is not an instance of
  ``retry_on`` (every ``Exception`` by default) is raised at once. Between tries, a delay from ``Backoff``
  (``first_s``, times ``factor``, at most ``cap_s``). ``on_error(exc, retry_in_s)`` judges each retried
  failure: it counts and logs, then raises (ends with that error), returns ``GIVE_UP`` (ends quietly:
  ``retry`` returns None) or returns None (try again after ``retry_in_s``).
- ``stop``: a ``threading.Event`` (the run's stop request); once set there is no further try (``retry``
  returns None) and a sleep ends at once.
- ``deadline``: a monotonic time, or a callable giving one (None: no deadline yet; the shutdown budget of
  ``pipeline.live.stopping`` has one only once a stop is requested). Sleeps end at it; a failure past it
  ends the retries with ``OutOfTime`` (its ``__cause__`` the failure), ``on_error`` not asked: there is no
  next try to judge. ``wake``: an event whose setting may bring the deadline forward (the stop request); a
  sleep looks at the deadline again when it is set, so a stop during a long sleep is not overslept.
- ``bounded(call, ...)``: a blocking call that has no timeout of its own, on a helper thread, waited for at
  most ``limit_s`` (the caller's error class after that; the thread is abandoned, the caller replaces the
  client it blocked on), beating liveness meanwhile.

Waits in pipeline/live and pipeline/kafka that are not retries and keep their own form: one wait on a
future or a process with its own timeout (the shutdown checkpoint's write, a revoke's wait for the open
transaction's commit, the embedded broker's process exit), the stall watch's ticker thread, and the embedded
broker command waiting for its signal.

Why a helper of our own and not ``tenacity``: tenacity covers the retry loop (``stop_when_event_set``, a
custom ``sleep``), but not the rest of what the runtime needs, which would be written around it anyway: a
three-way verdict per failure (raise, give up quietly, retry) that the five retrying callers share; a
deadline that appears only when a stop is requested and a sleep that notices it; a liveness beat before every
try; the librdkafka producer's ``poll`` as the sleep (it serves delivery reports while it waits); and the
bounded call, which tenacity does not have. This module is some 150 lines with no dependency, and the serving
image stays as it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

GIVE_UP = object()  # returned by a retry's on_error: stop retrying, quietly

Deadline = float | Callable[[], float | None] | None


class OutOfTime(TimeoutError):
    """The retries ended at their deadline; ``__cause__`` is the last failure."""


@dataclass(frozen=True)
class Backoff:
    """Delays between tries: ``first_s``, then each ``factor`` times the one before, never above ``cap_s``."""

    first_s: float = 0.5
    cap_s: float = 10.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not (0 <= self.first_s <= self.cap_s and self.factor >= 1):
            raise ValueError(f"a backoff needs 0 <= first_s <= cap_s and factor >= 1, not {self}")

    def delays(self) -> Iterator[float]:
        delay = self.first_s
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap_s)


def left_s(deadline: Deadline) -> float | None:
    """Seconds until ``deadline`` (negative when past); None without one."""
    at = deadline() if callable(deadline) else deadline
    return None if at is None else at - time.monotonic()


def pause(seconds: float, *, stop: threading.Event | None = None, wake: threading.Event | None = None,
          deadline: Deadline = None) -> bool:
    """Sleep ``seconds``, ending early at ``deadline`` or when ``stop`` is set. False: stopped."""
    end = time.monotonic() + seconds
    left = seconds
    while True:
        if stop is not None and stop.is_set():
            return False
        until_deadline = left_s(deadline)
        if until_deadline is not None:
            left = min(left, until_deadline)
        if left <= 0:
            return True
        if stop is not None:
            return not stop.wait(left)
        if wake is not None and not wake.is_set():
            if not wake.wait(left):
                return True  # slept it out
            left = end - time.monotonic()
            continue  # woken: the deadline may be nearer now
        time.sleep(left)
        return True


def retry(attempt: Callable[[], Any], on_error: Callable[[Exception, float], Any] | None = None, *,
          retry_on: type[Exception] | tuple[type[Exception], ...] = Exception, backoff: Backoff = Backoff(),
          stop: threading.Event | None = None, deadline: Deadline = None, wake: threading.Event | None = None,
          beat: Callable[[], None] | None = None, sleep: Callable[[float], Any] | None = None) -> Any:
    """``attempt()`` until it returns; what it returned, or None when given up or stopped (module docstring).

    ``beat`` (liveness) runs before every try: waiting on the broker is waiting on purpose. ``sleep`` replaces
    the stop-aware sleep (e.g. a client's poll that serves callbacks while it waits); ``stop`` is then looked
    at before each try only. Without ``on_error`` every failure is retried."""
    delays = backoff.delays()
    while stop is None or not stop.is_set():
        if beat is not None:
            beat()
        try:
            return attempt()
        except retry_on as exc:
            until_deadline = left_s(deadline)
            if until_deadline is not None and until_deadline <= 0:
                raise OutOfTime(f"still failing at the deadline: {exc!r}") from exc
            delay = next(delays)
            if until_deadline is not None:
                delay = min(delay, until_deadline)
            if on_error is not None and on_error(exc, delay) is GIVE_UP:
                return None
        if sleep is not None:
            sleep(delay)
        elif not pause(delay, stop=stop, wake=wake, deadline=deadline):
            return None
    return None


def bounded(call: Callable[..., Any], *args, limit_s: float, error: Callable[[str], BaseException] = TimeoutError,
            what: str | None = None, beat: Callable[[], None] | None = None, beat_every_s: float = 1.0) -> Any:
    """``call(*args)`` on a helper thread, waited for at most ``limit_s``: its result, or what it raised, or
    ``error("<what> got no answer within ...")`` after the limit. ``beat()`` every ``beat_every_s`` while it
    waits (waiting on the broker on purpose)."""
    what = what or getattr(call, "__name__", "call")
    done, box = threading.Event(), {}

    def run():
        try:
            box["result"] = call(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name=f"bounded-{what}").start()
    deadline = time.monotonic() + limit_s
    while not done.wait(max(0.0, min(beat_every_s, deadline - time.monotonic()))):
        if beat is not None:
            beat()
        if time.monotonic() >= deadline:
            raise error(f"{what} got no answer within {limit_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")
