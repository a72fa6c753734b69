"""Every metric tickcast exports, defined in one place, and the HTTP endpoint.

Prometheus conventions: prefix ``tickcast_``, base units (seconds, bytes),
``_total`` for counters, histograms for latencies and batch sizes, no
per-instrument labels (labels are at most ``partition``, ``reason``, ``topic``, and for the model comparison
``model_version``, ``role``, ``metric``, ``candidate``, ``primary``, ``loss``, ``bound``: a few models each).
Each ``Metrics`` owns its registry (tests build a fresh one each), with the
process and platform collectors of prometheus-client.

``/metrics`` serves the registry; ``/healthz`` answers 200 while the process's
loop is alive (it has made progress or polled within ``stall_s``);
``/readyz`` answers 200 once the consumer has its assignment and the broker
is reachable, 503 otherwise, and 503 while output is blocked (a missing topic,
a refused record being retried). Loops that wait on the broker on purpose call
``beat()``, so a liveness probe does not restart a process riding out an outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from operators.validation import REASON_LABELS

if TYPE_CHECKING:
    from pipeline.evaluation.compare import ComparisonSnapshot

SCORE_METRICS = ("mae", "rmse", "r2_vs_random_walk", "hit_rate")  # tickcast_model_score's metric label
BOUNDS = ("low", "mid", "high")  # tickcast_model_paired_difference's bound label

# Step and batch latencies run from ~100 us to seconds.
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class ArrayHistogram(Collector):
    """A histogram observed a whole array at a time, for one value per forecast: prometheus-client's
    ``Histogram.observe`` costs some 3.5 us a call, a tenth of the loop's time per forecast with librdkafka.
    Exposed exactly as a ``Histogram`` of the same buckets (``_bucket``, ``_count``, ``_sum``; no ``_created``)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry):
        self.name, self.documentation = name, documentation
        self.bounds = np.array([*buckets, float("inf")])
        self._counts = np.zeros(len(self.bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()  # observed on the loop's thread, collected on the server's
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Each value into the first bucket whose bound is >= it, as ``Histogram.observe`` does."""
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return
        counts = np.bincount(np.searchsorted(self.bounds, values), minlength=len(self.bounds))[:len(self.bounds)]
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self):
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        yield HistogramMetricFamily(self.name, self.documentation, sum_value=total,
                                    buckets=[(floatToGoString(b), c) for b, c in zip(self.bounds, cumulative)])

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation)]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        ns = "tickcast"
        self.ticks_received = Counter("ticks_received", "Messages consumed from the input topics",
                                      ["topic", "partition"], namespace=ns, registry=r)
        self.forecasts_published = Counter("forecasts_published", "Forecasts acknowledged by the broker",
                                           namespace=ns, registry=r)
        self.dead_letters = Counter("dead_letters", "Messages sent to the dead-letter topic, by reason",
                                    ["reason"], namespace=ns, registry=r)
        self.batch_ticks = Histogram("batch_ticks", "Ticks per micro-batch", namespace=ns, registry=r,
                                     buckets=_SIZE_BUCKETS)
        self.batch_instruments = Histogram("batch_instruments", "Distinct instruments per micro-batch",
                                           namespace=ns, registry=r, buckets=_SIZE_BUCKETS)
        self.step_seconds = Histogram("step_duration_seconds", "Operator step time per micro-batch",
                                      namespace=ns, registry=r, buckets=_LATENCY_BUCKETS)
        self.batch_seconds = Histogram("batch_duration_seconds",
                                       "Decode + step + publish + commit time per micro-batch",
                                       namespace=ns, registry=r, buckets=_LATENCY_BUCKETS)
        self.e2e_seconds = ArrayHistogram(f"{ns}_end_to_end_latency_seconds",
                                          "From a tick's receipt by the consumer to its forecast acknowledged",
                                          _LATENCY_BUCKETS, registry=r)
        self.lag = Gauge("consumer_lag_records", "Fetch high-watermark minus position, per partition",
                         ["topic", "partition"], namespace=ns, registry=r)
        self.state_rows = Gauge("state_rows", "Instruments held in the state table", namespace=ns, registry=r)
        self.state_bytes = Gauge("state_bytes", "Bytes held by the state table's buffers",
                                 namespace=ns, registry=r)
        self.state_rows_limit = Gauge("state_rows_limit", "max_instruments: rows the state table may hold "
                                      "(0: no limit); new instruments beyond it are dead-lettered as "
                                      "instrument_limit", namespace=ns, registry=r)
        self.expired_rows = Counter("state_expired_rows", "Idle instrument rows reclaimed",
                                    namespace=ns, registry=r)
        self.session_resets = Counter("session_resets", "Instrument states restarted after a long gap",
                                      namespace=ns, registry=r)
        self.non_finite_resets = Counter("non_finite_state_resets", "Instrument states zeroed because the model's "
                                         "output (or state) for a tick was NaN or infinite; each such tick is "
                                         "dead-lettered as non_finite_forecast", namespace=ns, registry=r)
        self.commits = Counter("offset_commits", "Offset commits after acknowledged publishes",
                               namespace=ns, registry=r)
        self.broker_errors = Counter("broker_errors", "Failed broker operations (will be retried), by operation",
                                     ["operation"], namespace=ns, registry=r)
        self.broker_up = Gauge("broker_up", "1 when the last broker operation succeeded", namespace=ns, registry=r)
        self.publish_errors = Counter("publish_errors", "Records the producer could not deliver yet, by reason "
                                      "(topic_missing, too_large, retriable, timeout, refused, fenced_by_timeout)",
                                      ["reason"], namespace=ns, registry=r)
        self.output_blocked = Gauge("output_blocked", "1 while forecasts or dead letters cannot be delivered "
                                    "(nothing is committed meanwhile; readiness is false)", namespace=ns, registry=r)
        self.dead_letters_truncated = Counter("dead_letters_truncated", "Dead letters sent with their key or value "
                                              "cut to fit the topic or the producer's max_request_size",
                                              namespace=ns, registry=r)
        self.assigned_partitions = Gauge("assigned_partitions", "Input partitions assigned to this process",
                                         namespace=ns, registry=r)
        self.rebalances = Counter("rebalances", "Partition assignment changes", namespace=ns, registry=r)
        self.last_progress = Gauge("last_progress_timestamp_seconds", "Unix time of the last processed batch",
                                   namespace=ns, registry=r)
        self.forecast_abs_error = Counter("forecast_abs_error", "Sum of |forecast - realised| over matured forecasts",
                                          namespace=ns, registry=r)
        self.random_walk_abs_error = Counter("random_walk_abs_error",
                                             "Sum of |realised| (the zero-return forecast's error), same ticks",
                                             namespace=ns, registry=r)
        self.forecasts_scored = Counter("forecasts_scored", "Forecasts whose realised value has arrived",
                                        namespace=ns, registry=r)
        self.checkpoint_writes = Counter("checkpoint_writes", "Partition checkpoints written, by result (ok, failed)",
                                         ["result"], namespace=ns, registry=r)
        self.checkpoint_seconds = Histogram("checkpoint_write_duration_seconds",
                                            "Time to serialise and store one partition checkpoint", namespace=ns,
                                            registry=r, buckets=_LATENCY_BUCKETS)
        self.checkpoint_bytes = Gauge("checkpoint_last_bytes", "Size of the last checkpoint written", namespace=ns,
                                      registry=r)
        self.checkpoint_last_success = Gauge("checkpoint_last_success_timestamp_seconds",
                                             "Unix time of the last successful checkpoint write", namespace=ns,
                                             registry=r)
        self.checkpoint_load_failures = Counter("checkpoint_load_failures",
                                                "Checkpoints skipped at restore as corrupt, truncated or unreadable",
                                                namespace=ns, registry=r)
        self.restores = Counter("partition_restores", "Partition assignments, by where the state came from "
                                "(checkpoint, warmup, replay_from_start, empty)", ["source"], namespace=ns, registry=r)
        self.restore_seconds = Histogram("restore_duration_seconds", "Time to load a partition's checkpoint",
                                         namespace=ns, registry=r, buckets=_LATENCY_BUCKETS)
        self.replayed_ticks = Counter("replayed_ticks", "Ticks stepped silently to rebuild state (no output)",
                                      namespace=ns, registry=r)
        self.candidate_catchup_records = Counter("candidate_catchup_records", "Records stepped into a candidate's "
                                                 "state alone to warm it up (no output), by candidate model version",
                                                 ["candidate"], namespace=ns, registry=r)
        self.candidate_catchup_partitions = Gauge("candidate_catchup_partitions", "Partitions whose candidate state "
                                                  "is being rebuilt from input, by candidate model version",
                                                  ["candidate"], namespace=ns, registry=r)
        self.transactions = Counter("transactions", "exactly_once: Kafka transactions, by result", ["result"],
                                    namespace=ns, registry=r)
        # The model comparison (pipeline.evaluation.compare), published by publish_comparison.
        model = ["model_version", "role"]
        self.model_score = Gauge("model_score", "Each model's score over the comparison window, by metric: mae, "
                                 "rmse (of the forecast log return), r2_vs_random_walk (1 - SSE/SSE of the zero "
                                 "forecast), hit_rate (direction)", [*model, "metric"], namespace=ns, registry=r)
        self.model_paired_difference = Gauge("model_paired_difference", "Mean loss(candidate) - loss(primary) over "
                                             "the window's forecasts every model made (loss: absolute, squared), and "
                                             "its 95% moving-block bootstrap interval (bound: low, mid, high); "
                                             "high below 0: the candidate is significantly better",
                                             ["candidate", "primary", "loss", "bound"], namespace=ns, registry=r)
        self.model_paired_forecasts = Gauge("model_paired_forecasts", "Forecasts in the comparison window that "
                                            "every model made (what the paired difference is over)",
                                            namespace=ns, registry=r)
        self.model_forecasts_scored = Counter("model_forecasts_scored", "Forecasts scored against their realised "
                                              "return, per model", model, namespace=ns, registry=r)
        self.model_started = Gauge("model_started_timestamp_seconds", "Unix time each model started forecasting",
                                   model, namespace=ns, registry=r)
        self.models_info = Gauge("models_info", "1 per model the run steps: its version, role (primary publishes, "
                                 "candidate in shadow) and horizon", [*model, "horizon_ticks"], namespace=ns,
                                 registry=r)
        self.candidate_refused_ticks = Counter("candidate_refused_ticks", "Ticks a candidate model refused (no "
                                               "dead letter: the primary's cover bad input)", ["model_version"],
                                               namespace=ns, registry=r)
        self._comparison_series: dict[Gauge, set[tuple[str, ...]]] = {}
        self._scored_seen: dict[tuple[str, str], int] = {}
        # Known label values start at 0, so rate() and the dashboard see a series before the first event.
        for reason in REASON_LABELS:
            self.dead_letters.labels(reason)
        for result in ("ok", "failed"):
            self.checkpoint_writes.labels(result)
        for result in ("committed", "aborted"):
            self.transactions.labels(result)
        for reason in ("topic_missing", "too_large", "retriable", "timeout", "refused", "fenced_by_timeout"):
            self.publish_errors.labels(reason)
        for source in ("checkpoint", "warmup", "replay_from_start", "empty"):
            self.restores.labels(source)
        self.model_info = Info("model", "The model bundle being served", namespace=ns, registry=r)
        self.compiled_loop = Gauge("compiled_loop", "1 when the compiled time loop steps the model; 0 when the "
                                   "NumPy path (several times slower) or the Keras engine does", namespace=ns, registry=r)
        self.start_time = Gauge("start_time_seconds", "Unix time the run started", namespace=ns, registry=r)
        self.start_time.set_to_current_time()
        self.broker_up.set(0)
        self.ready = False
        self.blocked: str | None = None  # why output cannot be delivered right now (readiness says so)
        self.alive_at = time.monotonic()
        self.stall_s = 120.0

    def beat(self) -> None:
        """The loop is alive: called every poll, and in every loop that waits on the broker on purpose."""
        self.alive_at = time.monotonic()

    def block(self, reason: str) -> None:
        """Output cannot be delivered (``reason``): readiness false until :meth:`unblock`; liveness stays true."""
        self.blocked = reason
        self.output_blocked.set(1)

    def unblock(self) -> None:
        self.blocked = None
        self.output_blocked.set(0)

    @property
    def is_ready(self) -> bool:
        return self.ready and self.blocked is None

    def publish_comparison(self, snapshot: "ComparisonSnapshot") -> None:
        """The model comparison's series from a snapshot: a score that does not exist (None) has no series, and
        the series of models or pairs no longer in the snapshot (removed, or promoted: a new role) are removed."""
        values: dict[Gauge, dict[tuple[str, ...], float]] = {self.model_score: {}, self.model_paired_difference: {},
                                                             self.model_started: {}}
        for m in snapshot.models:
            for metric in SCORE_METRICS:
                if getattr(m, metric) is not None:
                    values[self.model_score][(m.model_version, m.role, metric)] = getattr(m, metric)
            if m.started is not None:
                values[self.model_started][(m.model_version, m.role)] = m.started
            key = (m.model_version, m.role)
            seen = self._scored_seen.get(key, 0)
            self.model_forecasts_scored.labels(*key).inc(m.scored_total - seen if m.scored_total >= seen
                                                         else m.scored_total)  # a new scorer counts from 0
            self._scored_seen[key] = m.scored_total
        for d in snapshot.differences:
            if d.interval is not None:
                for bound, v in zip(BOUNDS, (d.interval.low, d.interval.mid, d.interval.high)):
                    values[self.model_paired_difference][(d.candidate, d.primary, d.loss, bound)] = v
        for gauge, series in values.items():
            for labels in self._comparison_series.get(gauge, set()) - series.keys():
                gauge.remove(*labels)
            for labels, v in series.items():
                gauge.labels(*labels).set(v)
            self._comparison_series[gauge] = set(series)
        self.model_paired_forecasts.set(snapshot.paired)


# The endpoint faces whoever can reach the port (README, "Metrics"): a slow or hostile client must not take it
# down. waitress reads each request on one event loop, a whole request before a worker thread sees it, so a
# client that sends half a request holds a socket, never a thread; these bounds hold the rest.
ENDPOINT_LIMITS = {
    "threads": 2,  # workers: the handlers are quick (a registry dump, a flag)
    "connection_limit": 1000,  # open connections (a socket each, no thread); past it new ones wait in the backlog
    "channel_timeout": 10,  # seconds a connection may sit idle or half-sent before it is closed
    "cleanup_interval": 2,  # seconds between sweeps for such connections
    "max_request_header_size": 16 * 1024,  # bytes
    "max_request_body_size": 1024,  # bytes: nothing here takes a body
    "backlog": 128,
}


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on a background thread (waitress, bounded: ``ENDPOINT_LIMITS``)."""

    def __init__(self, metrics: Metrics, address: str, **limits):
        from waitress.server import create_server  # noqa: PLC0415 - the serving process only

        host, _, port = address.rpartition(":")
        metrics_app = make_wsgi_app(metrics.registry)
        self.metrics = metrics

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                ok = time.monotonic() - metrics.alive_at < metrics.stall_s
                return _plain(start_response, ok, "ok\n" if ok else "stalled\n")
            if path == "/readyz":
                if metrics.blocked is not None:
                    return _plain(start_response, False, f"not ready: output blocked ({metrics.blocked})\n")
                return _plain(start_response, metrics.ready, "ready\n" if metrics.ready else "not ready\n")
            if path in ("/metrics", "/"):
                return metrics_app(environ, start_response)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics, /healthz or /readyz\n"]

        self._server = create_server(app, host=host.strip("[]"), port=int(port), ident="", expose_tracebacks=False,
                                     asyncore_use_poll=True, **{**ENDPOINT_LIMITS, **limits})
        self.address = f"{host}:{self._server.effective_port}"
        self._thread = threading.Thread(target=self._serve, name="metrics-http", daemon=True)

    def _serve(self) -> None:
        try:
            self._server.run()
        except (OSError, ValueError):  # the listener closed under the loop by stop()
            pass

    def start(self) -> "MetricsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the workers, close the listener and every open connection; the loop ends within a second."""
        from waitress import wasyncore  # noqa: PLC0415

        self._server.task_dispatcher.shutdown(timeout=1)
        wasyncore.close_all(self._server._map, ignore_all=True)
        self._thread.join(2.0)


def _plain(start_response, ok: bool, body: str):
    start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
    return [body.encode()]
