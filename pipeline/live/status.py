"""What the run tells about itself beyond metrics definitions: counters kept in process (RunStats, the
summary at exit), what each settled batch adds to them and to the metrics (``account``), consumer lag, the
status line, ticks received per partition, online scoring."""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline import logs
from pipeline.evaluation.online import OnlineScorer
from pipeline.live.inflight import Batch
from pipeline.live.partitions import Partitions
from pipeline.metrics import Metrics

log = logs.get("run")
STARTUP_S = 10.0  # latencies of batches settled this soon after the first batch arrived count as start-up


@dataclass
class RunStats:
    ticks: int = 0
    forecasts: int = 0
    dead_letters: int = 0
    batches: int = 0
    replayed: int = 0  # ticks stepped silently to rebuild state (recovery, warm-up)
    checkpoints: int = 0
    checkpoint_failures: int = 0
    started: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time the first batch's records arrived
    last_batch_done: float | None = None
    latencies: deque = field(default_factory=lambda: deque(maxlen=200_000))
    # The same latencies split at STARTUP_S after the first batch arrived: the first batches pay for
    # start-up (imports, first allocations, a partition's first fetch) and say nothing of the steady state.
    startup_latencies: deque = field(default_factory=lambda: deque(maxlen=200_000))
    steady_latencies: deque = field(default_factory=lambda: deque(maxlen=200_000))

    def percentiles(self, which: str = "all") -> dict[str, float | None]:
        """p50, p99 and max in ms over ``which``: "all", "startup" (batches settled in the first STARTUP_S after
        the first batch arrived) or "steady" (after)."""
        values = {"all": self.latencies, "startup": self.startup_latencies, "steady": self.steady_latencies}[which]
        if not values:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        a = np.fromiter(values, dtype=np.float64)
        return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3),
                "max_ms": float(a.max() * 1e3)}

    def add_latencies(self, now: float, latencies: list[float]) -> None:
        """Latencies of a batch settled at ``now`` (monotonic): start-up until STARTUP_S after the first batch
        arrived, steady state after."""
        self.latencies.extend(latencies)
        startup = self.first_batch_at is None or now - self.first_batch_at < STARTUP_S
        (self.startup_latencies if startup else self.steady_latencies).extend(latencies)

    def summary(self) -> dict:
        """The fields of the ``stopped`` log line (and of the CLI's result)."""
        elapsed = time.monotonic() - self.started
        return {"ticks": self.ticks, "forecasts": self.forecasts,
                "dead_letters": self.dead_letters, "batches": self.batches,
                "replayed": self.replayed, "checkpoints": self.checkpoints,
                "checkpoint_failures": self.checkpoint_failures,
                "elapsed_s": round(elapsed, 1), **{k: (round(v, 2) if v is not None else None)
                                                   for k, v in self.percentiles().items()},
                **{f"{which}_{k}": (round(v, 2) if v is not None else None)
                   for which in ("startup", "steady") for k, v in self.percentiles(which).items()}}


def count_received(metrics: Metrics, partitions: Partitions, part_ids: np.ndarray) -> None:
    """ticks_received by input topic and partition (two topics' partition 0 are two series)."""
    for p, c in zip(*np.unique(part_ids, return_counts=True)):
        tp = partitions.tp_of(int(p))
        metrics.ticks_received.labels(tp.topic, str(tp.partition)).inc(int(c))


def update_lag(metrics: Metrics, partitions: Partitions, consumer) -> None:
    """Fetch high-watermark minus position per assigned partition (a revoke drops a partition's series)."""
    for p in partitions:
        hw = consumer.highwater(p.tp)
        if hw is None:
            continue
        try:
            pos = consumer.position(p.tp, timeout_ms=100)
        except Exception:  # noqa: BLE001 - lag is best effort
            continue
        if pos is not None:
            p.saw_lag(max(hw - pos, 0))
            metrics.lag.labels(p.tp.topic, str(p.tp.partition)).set(p.lag)


def drop_lag(metrics: Metrics, tp) -> None:
    """A partition this process no longer reads has no lag here: drop its series."""
    try:
        metrics.lag.remove(tp.topic, str(tp.partition))
    except KeyError:
        pass


def report_status(stats: RunStats, partitions: Partitions, n_instruments: int) -> None:
    """One status line: redrawn in place on a terminal, a ``status`` log event otherwise."""
    s = stats
    elapsed = max(time.monotonic() - s.started, 1e-9)
    pct = s.percentiles()
    lag = sum(p.lag or 0 for p in partitions)  # as of the last batch
    p99 = f"{pct['p99_ms']:.1f}ms" if pct["p99_ms"] is not None else "-"
    line = (f"ticks {s.ticks:,} ({s.ticks / elapsed:,.0f}/s)  forecasts {s.forecasts:,}  "
            f"dead letters {s.dead_letters:,}  lag {lag:,}  p99 {p99}  "
            f"instruments {n_instruments:,}  partitions {len(partitions)}")
    if sys.stderr.isatty():
        print(f"\r\x1b[2K{line}", end="", file=sys.stderr, flush=True)
    else:
        log.info("status", extra={"ticks": s.ticks, "forecasts": s.forecasts, "dead_letters": s.dead_letters,
                                  "lag": lag, "p99_ms": pct["p99_ms"], "instruments": n_instruments})


def score(scorer: OnlineScorer, metrics: Metrics, ticks: pa.Table, rows: np.ndarray, forecasts: np.ndarray,
          expired: list[tuple[int, str]] = ()) -> None:
    """Score the forecasts that mature with this batch; forget what the state table expired in it."""
    _score_batch(scorer, metrics, ticks, rows, forecasts)
    scorer.forget(expired)  # after scoring: a key stepped and expired in one batch is gone from both


def _score_batch(scorer: OnlineScorer, metrics: Metrics, ticks: pa.Table, rows: np.ndarray,
                 forecasts: np.ndarray) -> None:
    if len(rows) == 0:
        return
    keys, group, price = instrument_groups(ticks, rows)
    if forecasts.ndim == 2:  # several outputs: the online error is the first output's (its horizon: bundle.horizon)
        forecasts = forecasts[:, 0]
    m = scorer.update(keys, group, price, forecasts)
    if m.count:
        metrics.forecast_abs_error.inc(m.abs_error)
        metrics.random_walk_abs_error.inc(m.random_walk_abs_error)
        metrics.forecasts_scored.inc(m.count)


def account(metrics: Metrics, stats: RunStats, scorer: OnlineScorer, state, batch: Batch, out_rows: np.ndarray,
            t_batch: float) -> None:
    """After a batch's commit: latencies, online scores, counters and gauges (``state``: the operator's state
    table, for its size)."""
    m, s, result = metrics, stats, batch.result
    msg_index = batch.idx[out_rows]
    now = time.monotonic()
    lat = now - np.asarray(batch.received_at)[msg_index] if len(msg_index) else np.zeros(0)
    m.e2e_seconds.observe_many(lat)
    if s.first_batch_at is None:
        s.first_batch_at = min(batch.received_at)
    s.add_latencies(now, lat.tolist())
    score(scorer, m, batch.ticks, batch.rows, batch.forecasts, result.expired)
    s.ticks += len(batch.records)
    s.forecasts += len(out_rows)
    s.dead_letters += len(batch.dead)
    s.batches += 1
    s.last_batch_done = now
    for d in batch.dead:
        m.dead_letters.labels(d.reason).inc()
    m.forecasts_published.inc(len(out_rows))
    m.batch_ticks.observe(len(batch.records))
    m.batch_instruments.observe(result.n_instruments)
    m.session_resets.inc(result.n_resets)
    m.non_finite_resets.inc(result.n_non_finite_resets)
    m.expired_rows.inc(result.n_expired)
    m.state_rows.set(len(state))
    m.state_bytes.set(state.nbytes)
    m.batch_seconds.observe(time.perf_counter() - t_batch)
    m.last_progress.set_to_current_time()


def instrument_groups(ticks: pa.Table, rows: np.ndarray) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray]:
    """For the scorers: the distinct (partition, instrument) keys of these tick rows, each row's key index and
    its price."""
    take = pa.array(rows)
    names = ticks.column("instrument").take(take)
    parts = ticks.column("partition").take(take).to_numpy()
    enc = names.combine_chunks().dictionary_encode() if isinstance(names, pa.ChunkedArray) \
        else names.dictionary_encode()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_codes = len(enc.dictionary)
    composite = parts.astype(np.int64) * n_codes + codes
    uniq, group = np.unique(composite, return_inverse=True)
    dictionary = enc.dictionary.to_pylist()
    keys = [(int(u // n_codes), dictionary[int(u % n_codes)]) for u in uniq]
    return keys, group, ticks.column("price").take(take).to_numpy()
