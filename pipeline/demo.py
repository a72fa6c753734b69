"""``tickcast demo``: synthetic ticks -> train -> file backtest -> live through an embedded broker.

Everything a newcomer needs to see the project work on one machine, narrated
step by step on stderr, results on stdout. The live part replays the last 30%
of the ticks into the embedded broker's ``ticks`` topic from a feeder thread
while :class:`pipeline.live.runner.Runner` consumes them, then prints the
run's summary; Ctrl-C stops both.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from operators.bundle import Bundle
from pipeline.console import format_summary

TRAIN_FRACTION = 0.7  # the first 70% of the ticks train the model, the rest are backtested and replayed live


def run_demo(workdir: str | Path, *, instruments: int, ticks: int, max_batch_ticks: int, files_only: bool,
             retrain: bool, live_seconds: float, metrics_address: str) -> int:
    """Generate, train (or reuse the model in ``workdir``), backtest; then, unless ``files_only``, run live."""
    from operators.bundle import load_bundle, save_bundle  # noqa: PLC0415
    from operators.errors import BundleError  # noqa: PLC0415
    from operators.training import TrainConfig, train  # noqa: PLC0415
    from pipeline.evaluation.backtest import run_backtest  # noqa: PLC0415
    from pipeline.files.sinks import write_parquet  # noqa: PLC0415
    from pipeline.files.synthetic import generate_ticks  # noqa: PLC0415

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    steps = 3 if files_only else 5
    say = lambda i, text: print(f"[{i}/{steps}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    say(1, f"generating {ticks:,} synthetic ticks over {instruments} instruments")
    table = generate_ticks(instruments, ticks, seed=7)
    write_parquet(table, work / "ticks.parquet")
    cut = int(table.num_rows * TRAIN_FRACTION)
    train_part, test_part = table.slice(0, cut), table.slice(cut)
    bundle = None
    if (work / "model").exists() and not retrain:
        try:
            bundle = load_bundle(work / "model")
            say(2, f"using the model in {work / 'model'} (version {bundle.model_version}; --retrain to train anew)")
        except BundleError:
            bundle = None
    if bundle is None:
        say(2, f"training on the first {cut:,} ticks")
        started = time.perf_counter()
        bundle = train(train_part, TrainConfig(), source=str(work / "ticks.parquet") + f"[0:{cut}]",
                       on_epoch=lambda e, logs: print(f"  epoch {e + 1} loss={logs.get('loss', 0):.4f} "
                                                      f"val_loss={logs.get('val_loss', float('nan')):.4f} "
                                                      f"({time.perf_counter() - started:.0f}s)", file=sys.stderr))
        save_bundle(bundle, work / "model")
        bundle = load_bundle(work / "model")
    say(3, f"backtesting the last {test_part.num_rows:,} ticks from the file, micro-batches of {max_batch_ticks:,}")
    result = run_backtest(test_part, bundle, work / "backtest", max_batch_ticks=max_batch_ticks,
                          source_name=str(work / "ticks.parquet") + f"[{cut}:]")
    print(format_summary(result.summary, result.out_dir))
    if files_only:
        return 0
    return run_live(workdir, bundle, test_part, say, live_seconds=live_seconds, metrics_address=metrics_address)


def run_live(workdir: str | Path, bundle: Bundle, ticks: pa.Table, say: Callable[[int, str], None], *,
             live_seconds: float, metrics_address: str) -> int:
    """Steps 4 and 5: an embedded broker, ``ticks`` replayed into it over ``live_seconds``, a Runner consuming."""
    import shutil  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from kafka import KafkaProducer  # noqa: PLC0415

    from pipeline import logs  # noqa: PLC0415
    from pipeline.kafka.broker import INPUT_TOPIC_CONFIG, EmbeddedBroker, create_topics  # noqa: PLC0415
    from pipeline.config import RunConfig  # noqa: PLC0415
    from pipeline.live.runner import Runner  # noqa: PLC0415
    from pipeline.live.status import STARTUP_S  # noqa: PLC0415
    from pipeline.metrics import Metrics, MetricsServer  # noqa: PLC0415
    from pipeline.kafka.replay import replay  # noqa: PLC0415

    logs.configure("text", "warning")
    # The embedded broker starts empty every time: checkpoints of an earlier demo belong to offsets that no
    # longer exist.
    shutil.rmtree(Path(workdir) / "checkpoints", ignore_errors=True)
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, {"ticks": 2, "forecasts": 2, "ticks.dlq": 1},
                      configs={"ticks": INPUT_TOPIC_CONFIG})
        say(4, f"embedded Kafka-protocol broker on {broker.bootstrap}; topics ticks (2 partitions), forecasts, "
               "ticks.dlq")
        cfg = RunConfig.load(env={}, flags=dict(model=str(bundle.path), bootstrap_servers=broker.bootstrap,
                                                group_id="tickcast-demo", metrics_address=metrics_address,
                                                status_interval_s=1, max_batch_ms=20,
                                                checkpoint_uri=str(Path(workdir) / "checkpoints")))
        metrics = Metrics()
        server = MetricsServer(metrics, cfg.metrics_address).start()
        runner = Runner(cfg, bundle, metrics)
        span_s = (ticks.column("ts")[-1].as_py() - ticks.column("ts")[0].as_py()) / 1e9
        speed = max(span_s / live_seconds, 1e-9)
        say(5, f"replaying {ticks.num_rows:,} ticks at {speed:.1f}x real time (~{live_seconds:g} s) into "
               f"`ticks`; tickcast run consumes; metrics at http://{server.address}/metrics")
        stop = threading.Event()

        def feed():
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
            try:
                replay(ticks, "ticks", producer, speed=speed, progress=False, stop=stop)
            finally:
                producer.close()
            deadline = time.monotonic() + 30
            while runner.stats.ticks < ticks.num_rows and time.monotonic() < deadline and not stop.is_set():
                time.sleep(0.1)
            runner.request_stop()

        def interrupt(*_):
            stop.set()
            runner.request_stop()

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        code = runner.run()
        server.stop()
        feeder.join(timeout=5)
    s = runner.summary()
    rejected = ", ".join(f"{k}" for k in sorted({k for k in _dead_letter_reasons(metrics)})) or "none"
    print(file=sys.stderr)
    print(f"live: {s['ticks']:,} ticks consumed, {s['forecasts']:,} forecasts published, "
          f"{s['dead_letters']:,} dead letters ({rejected}) in {s['elapsed_s']} s")
    print("  latency tick received -> forecast acknowledged:")
    print(f"    steady state (after the first {STARTUP_S:g} s): p50 {s['steady_p50_ms']} ms, "
          f"p99 {s['steady_p99_ms']} ms, max {s['steady_max_ms']} ms")
    print(f"    start-up (the first {STARTUP_S:g} s: imports, first allocations, first fetches): "
          f"p50 {s['startup_p50_ms']} ms, p99 {s['startup_p99_ms']} ms, max {s['startup_max_ms']} ms")
    print(f"  where to look: forecasts and dead letters were on topics `forecasts` and `ticks.dlq` of the "
          f"embedded broker (in memory, now stopped); files in {workdir}/; state checkpoints: "
          f"`tickcast state inspect {Path(workdir) / 'checkpoints'}`; run it yourself with "
          "`tickcast broker`, `tickcast run --help`, `tickcast replay --help`")
    return code


def _dead_letter_reasons(metrics) -> list[str]:
    """The reasons that sent at least one message to the dead-letter topic."""
    out = []
    for metric in metrics.dead_letters.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value > 0:
                out.append(sample.labels["reason"])
    return out
