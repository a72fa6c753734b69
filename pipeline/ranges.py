"""Where every numeric config key must lie: one table (:data:`RANGES`), read by ``RunConfig.check`` (refusal),
``--help`` (each flag's range) and the README's table (a test keeps them equal). Durations in nanoseconds."""

from __future__ import annotations

from dataclasses import dataclass

UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
            "h": 3_600_000_000_000, "d": 86_400_000_000_000}
MAX_DURATION_NS = 3650 * UNITS_NS["d"]
MAX_DATE_NS = 7_258_118_400_000_000_000  # 2200-01-01: plus any duration above, still inside int64 nanoseconds
INT32_MAX = 2**31 - 1  # Kafka's wire format carries byte counts and timeouts as signed 32-bit integers
MAX_CANDIDATES = 8  # candidate models of one run: each steps every batch again (cost grows with their number)


@dataclass(frozen=True)
class Range:
    """Where a numeric key (or a duration key, in nanoseconds) must lie: finite, ``lo`` to ``hi`` inclusive."""

    lo: float
    hi: float
    unit: str
    why: str = ""

    def describe(self) -> str:
        if self.unit == "duration":
            return f"{format_ns(int(self.lo))}..{format_ns(int(self.hi))}"
        return f"{_number(self.lo)}..{_number(self.hi)} {self.unit}"


# The one home of every numeric key's range: `check` refuses values outside it, `--help` prints it, the README's
# table lists it. A bound is where the run would fail or misbehave beyond, not a taste.
RANGES: dict[str, Range] = {
    "max_batch_ticks": Range(1, 10_000_000, "ticks", "the consumer's max_poll_records; a batch's memory"),
    "max_batch_ms": Range(1, 600_000, "ms", "a tick's latency budget"),
    "max_batches_in_flight": Range(1, 16, "batches", "above 2 gains little (README, Pipelining)"),
    "checkpoint_interval_s": Range(0.0, 604_800.0, "s", "0: off; at most a week"),
    "checkpoint_every_batches": Range(0, 1_000_000_000, "batches", "0: off"),
    "checkpoint_keep": Range(1, 1_000, "checkpoints", "per partition"),
    "max_instruments": Range(0, 100_000_000, "instruments", "0: no limit; about 1.1 KB each"),
    "status_interval_s": Range(0.0, 86_400.0, "s", "0: off"),
    "shutdown_timeout_s": Range(1.0, 3_600.0, "s", "the whole shutdown, every step included"),
    "fetch_max_bytes": Range(1_024, INT32_MAX, "bytes", "Kafka's fetch.max.bytes is a signed 32-bit integer"),
    "request_timeout_ms": Range(1_000, 300_000, "ms", "below kafka-python's connections_max_idle_ms (540000); "
                                "twice it below transaction_timeout_ms"),
    "transaction_timeout_ms": Range(1_000, 3_600_000, "ms",
                                    "the broker's transaction.max.timeout.ms (default 900000) must allow it"),
    "session_timeout_ms": Range(1_000, 3_600_000, "ms",
                                "the broker's group.min/max.session.timeout.ms (default 6000..1800000) must allow it"),
    "fetch_max_wait_ms": Range(1, 60_000, "ms", "below request_timeout_ms"),
    # Durations (strings such as "30m"), bounds in nanoseconds: a positive whole number of nanoseconds, and no
    # more than 3650 days, so an event time plus the duration stays inside int64 nanoseconds.
    "reset_gap": Range(1_000_000, MAX_DURATION_NS, "duration", "empty: never"),
    "expire_after": Range(1_000_000_000, MAX_DURATION_NS, "duration", "empty: never"),
    "warmup": Range(1_000_000_000, MAX_DURATION_NS, "duration", "empty: none"),
    "max_ts_ahead": Range(1_000_000, MAX_DURATION_NS, "duration", "Kafka timestamp skew allowed"),
}

# Numeric flags of the other commands that nothing else checks (a NaN learning rate trains NaN weights; a NaN or
# zero price scale makes every tick invalid).
FLAG_RANGES: dict[str, Range] = {
    "learning_rate": Range(1e-9, 1.0, "", "Adam's step size"),
    "price_scale": Range(1e-12, 1e12, "", "a multiplier of prices"),
}


def format_ns(ns: int) -> str:
    """The shortest exact spelling of a duration: 86_400_000_000_000 -> '1d'."""
    for unit in ("d", "h", "m", "s", "ms", "us"):
        if ns % UNITS_NS[unit] == 0:
            return f"{ns // UNITS_NS[unit]}{unit}"
    return f"{ns}ns"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)
