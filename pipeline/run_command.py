"""``tickcast run``: load the bundle, serve metrics, run the live loop until it stops, say how it went."""

from __future__ import annotations

import os
import sys

from pipeline.config import ConfigError, RunConfig


def run_live(cfg: RunConfig) -> int:
    """Run :class:`pipeline.live.runner.Runner` under ``cfg`` with its metrics endpoint; the runner's exit code."""
    from operators.bundle import load_bundle  # noqa: PLC0415
    from pipeline import logs  # noqa: PLC0415
    from pipeline.candidates import load_candidates  # noqa: PLC0415
    from pipeline.live.runner import Runner  # noqa: PLC0415
    from pipeline.metrics import Metrics, MetricsServer  # noqa: PLC0415

    logs.configure(cfg.log_format, cfg.log_level)
    bundle = load_bundle(cfg.model)
    candidates = load_candidates(bundle, [c.model for c in cfg.candidates])
    metrics = Metrics()
    try:
        server = MetricsServer(metrics, cfg.metrics_address).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on metrics_address {cfg.metrics_address}: {exc.strerror}; "
                          "pick another port with --metrics-address") from None
    log = logs.get("cli")  # the start-up line keeps its logger name, tickcast.cli
    log.info("starting", extra={"model_version": bundle.model_version, "metrics": f"http://{server.address}/metrics",
                                "candidates": ",".join(c.model_version for c in candidates),
                                **{k: v for k, v in cfg.redacted().items() if k in
                                   ("bootstrap_servers", "group_id", "output_topic", "dead_letter_topic",
                                    "max_batch_ticks", "max_batch_ms", "max_batches_in_flight", "output_mode",
                                    "output_format", "processing", "kafka_client")}})
    runner = Runner(cfg, bundle, metrics, candidates=candidates)
    runner.install_signal_handlers()
    try:
        code = runner.run()
    finally:
        server.stop()
    if sys.stderr.isatty():
        print(file=sys.stderr)
    s = runner.summary()
    print(f"tickcast run: {s['ticks']:,} ticks, {s['forecasts']:,} forecasts, {s['dead_letters']:,} dead letters "
          f"in {s['elapsed_s']} s; latency p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms", file=sys.stderr)
    if runner.checkpointer.abandoned:
        # The write left running at its deadline still holds the store's client: exit-time hooks (pyarrow's S3
        # finalizer) would wait for it, past the shutdown timeout. Exit now; the previous checkpoint is whole.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
