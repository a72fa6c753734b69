"""The ``tickcast`` command line: parses, builds, calls. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from operators.errors import TickcastError
from pipeline.config import (
    DEFAULT_MAX_BATCH_TICKS,
    ConfigError,
    parse_duration_ns,
    parse_mapping,
)


def _env_default(name: str, default):
    return os.environ.get(f"TICKCAST_{name}", default)


def _add_input_args(p: argparse.ArgumentParser, topic: bool = True) -> None:
    p.add_argument("--input", default=None, required=not topic,
                   help="tick file or directory (Parquet, CSV, or a vendor layout)")
    if topic:
        p.add_argument("--topic", default=None,
                       help="read ticks from this Kafka topic instead (manual assignment: no group, no commits); "
                            "--from/--to select by record timestamp")
        p.add_argument("--bootstrap-servers", default=os.environ.get("TICKCAST_BOOTSTRAP_SERVERS", "localhost:9092"),
                       help="Kafka for --topic [env: TICKCAST_BOOTSTRAP_SERVERS] (default: localhost:9092)")
    p.add_argument("--format", default="auto",
                   help="input format: auto, parquet, csv, lean-equity, lean-fx, lobster, binance-gz, nautilus "
                        "(default: auto, from the path)")
    p.add_argument("--map", default=None, metavar="CANON=SOURCE,...",
                   help="column mapping for Parquet/CSV, e.g. --map instrument=sym,price=last,ts=time")
    p.add_argument("--instrument", default=None, help="instrument name for single-instrument files without one")
    p.add_argument("--price-scale", type=float, default=1.0, help="multiply prices by this (e.g. 0.0001)")
    p.add_argument("--ts-unit", default="ns", choices=["s", "ms", "us", "ns"],
                   help="unit of integer timestamps in Parquet/CSV (default: ns)")
    p.add_argument("--from", dest="time_from", default=None, metavar="TIME",
                   help="keep ticks at or after this UTC time (ISO 8601, e.g. 2013-10-09)")
    p.add_argument("--to", dest="time_to", default=None, metavar="TIME",
                   help="keep ticks before this UTC time (ISO 8601)")


def _parse_time_ns(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return int(np.datetime64(text.rstrip("Z"), "ns").astype(np.int64))
    except ValueError:
        raise ConfigError(f"{flag} {text!r} is not an ISO 8601 time; write e.g. 2013-10-09 or 2013-10-09T14:30") from None


def _load_input(args: argparse.Namespace):
    import pyarrow.compute as pc  # noqa: PLC0415

    from pipeline.formats import read_ticks  # noqa: PLC0415

    if getattr(args, "source_is_topic", True) and (args.input is None) == (getattr(args, "topic", None) is None):
        raise ConfigError("give exactly one of --input FILE and --topic TOPIC")
    if getattr(args, "source_is_topic", True) and args.topic is not None:
        return _load_topic(args)

    table = read_ticks(args.input, args.format, parse_mapping(args.map), instrument=args.instrument,
                       price_scale=args.price_scale, ts_unit=args.ts_unit)
    lo, hi = _parse_time_ns(args.time_from, "--from"), _parse_time_ns(args.time_to, "--to")
    if lo is not None or hi is not None:
        ts = table.column("ts")
        mask = pc.and_(pc.greater_equal(ts, lo if lo is not None else np.iinfo(np.int64).min),
                       pc.less(ts, hi if hi is not None else np.iinfo(np.int64).max))
        table = table.filter(pc.fill_null(mask, True))
    if table.num_rows == 0:
        raise ConfigError(f"no ticks in {args.input} for the given --from/--to; widen the range")
    return table


def _load_topic(args: argparse.Namespace):
    from kafka.errors import KafkaError  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    from pipeline.topics import read_topic_range  # noqa: PLC0415

    lo, hi = _parse_time_ns(args.time_from, "--from"), _parse_time_ns(args.time_to, "--to")
    with tqdm(unit="msg", unit_scale=True, desc=f"reading {args.topic}", disable=getattr(args, "quiet", False),
              mininterval=0.5) as bar:
        try:
            got = read_topic_range(args.bootstrap_servers, args.topic, None if lo is None else lo // 1_000_000,
                                   None if hi is None else hi // 1_000_000, progress=bar.update)
        except KafkaError as exc:
            raise ConfigError(f"cannot read {args.topic} from {args.bootstrap_servers}: {exc}; is Kafka "
                              "running and the address right?") from None
    if got.ticks.num_rows == 0 and got.rejected.num_rows == 0:
        raise ConfigError(f"no records in {args.topic} for the given --from/--to; widen the range")
    args.topic_rejected = got.rejected
    return got.ticks


def _forecaster_config(args: argparse.Namespace):
    from operators.forecaster import ForecasterConfig  # noqa: PLC0415

    return ForecasterConfig(
        reset_gap_ns=parse_duration_ns(args.reset_gap, "--reset-gap") if args.reset_gap else None,
        expire_after_ns=parse_duration_ns(args.expire_after, "--expire-after") if args.expire_after else None,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from operators.bundle import save_bundle  # noqa: PLC0415
    from operators.training import train  # noqa: PLC0415

    cfg = _train_config(args)
    ticks = _load_input(args)
    print(f"training on {min(ticks.num_rows, cfg.max_ticks):,} of {ticks.num_rows:,} ticks "
          f"({cfg.layers} layer(s) x {cfg.hidden}, horizon {cfg.horizon} ticks, {cfg.epochs} epochs)", file=sys.stderr)
    started = time.perf_counter()

    def on_epoch(epoch: int, logs: dict) -> None:
        val = f" val_loss={logs['val_loss']:.4f}" if "val_loss" in logs else ""
        print(f"  epoch {epoch + 1}/{cfg.epochs} loss={logs.get('loss', float('nan')):.4f}{val} "
              f"({time.perf_counter() - started:.0f}s)", file=sys.stderr)

    source = str(args.input) if args.input else f"kafka://{args.bootstrap_servers}/{args.topic}"
    bundle = train(ticks, cfg, source=source, on_epoch=on_epoch)
    path = save_bundle(bundle, args.out)
    print(f"model {bundle.model_version} written to {path} in {time.perf_counter() - started:.1f}s "
          f"({bundle.training['valid_ticks']:,} valid ticks, {bundle.training['instruments']} instruments)")
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from operators.bundle import load_bundle  # noqa: PLC0415
    from pipeline.backtest import run_backtest  # noqa: PLC0415

    if args.max_batch_ticks < 1:
        raise ConfigError(f"--max-batch-ticks must be >= 1, got {args.max_batch_ticks}")
    config = _forecaster_config(args)
    bundle = load_bundle(args.model)
    ticks = _load_input(args)
    source = str(args.input) if args.input else f"kafka://{args.bootstrap_servers}/{args.topic}" + (
        f"[{args.time_from or ''}, {args.time_to or ''})" if args.time_from or args.time_to else "")
    result = run_backtest(ticks, bundle, args.out, max_batch_ticks=args.max_batch_ticks, config=config,
                          source_name=source, plots=not args.no_plots, progress=not args.quiet,
                          undecodable=getattr(args, "topic_rejected", None))
    print(format_summary(result.summary, result.out_dir))
    return 0


def format_summary(s: dict, out_dir: Path) -> str:
    def f(v, spec=".3e"):
        return "-" if v is None else format(v, spec)

    m, rw = s["model"], s["random_walk"]
    rejected = ", ".join(f"{k}={v}" for k, v in s["rejected"].items()) or "none"
    r2 = s["r2_vs_random_walk"]
    lines = [
        f"backtest of model {s['model_version']} on {s['input']}",
        f"  ticks {s['ticks']:,}  forecasts {s['forecasts']:,}  instruments {s['instruments']:,}  "
        f"batches {s['batches']:,} (max {s['max_batch_ticks']:,} ticks)",
        f"  rejected: {rejected}",
        f"  scored {s['scored']:,} ticks at horizon {s['horizon_ticks']} ticks",
        f"  {'':14}{'MAE':>11}{'RMSE':>11}{'hit rate':>10}{'IC':>8}",
        f"  {'model':14}{f(m['mae']):>11}{f(m['rmse']):>11}{f(m['hit_rate'], '.3f'):>10}{f(m['ic'], '.3f'):>8}",
        f"  {'random walk':14}{f(rw['mae']):>11}{f(rw['rmse']):>11}{'-':>10}{'-':>8}",
        f"  R^2 vs random walk: {f(r2, '+.4f')}   operator speed: {f(s['operator_ticks_per_second'], ',.0f')} ticks/s",
        f"  outputs: {out_dir}/report.html, forecasts.parquet, summary.json, per_instrument.parquet, plots/",
    ]
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.sinks import write_parquet  # noqa: PLC0415
    from pipeline.synthetic import generate_ticks  # noqa: PLC0415

    table = generate_ticks(args.instruments, args.ticks, seed=args.seed)
    write_parquet(table, Path(args.out))
    print(f"{table.num_rows:,} synthetic ticks over {args.instruments} instruments written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from operators.errors import BundleError  # noqa: PLC0415
    from operators.bundle import load_bundle, save_bundle  # noqa: PLC0415
    from operators.training import TrainConfig, train  # noqa: PLC0415
    from pipeline.backtest import run_backtest  # noqa: PLC0415
    from pipeline.sinks import write_parquet  # noqa: PLC0415
    from pipeline.synthetic import generate_ticks  # noqa: PLC0415

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    steps = 3 if args.files_only else 5
    say = lambda i, text: print(f"[{i}/{steps}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    say(1, f"generating {args.ticks:,} synthetic ticks over {args.instruments} instruments")
    ticks = generate_ticks(args.instruments, args.ticks, seed=7)
    write_parquet(ticks, work / "ticks.parquet")
    cut = int(ticks.num_rows * 0.7)
    train_part, test_part = ticks.slice(0, cut), ticks.slice(cut)
    bundle = None
    if (work / "model").exists() and not args.retrain:
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
    say(3, f"backtesting the last {test_part.num_rows:,} ticks from the file, micro-batches of {args.max_batch_ticks:,}")
    result = run_backtest(test_part, bundle, work / "backtest", max_batch_ticks=args.max_batch_ticks,
                          source_name=str(work / "ticks.parquet") + f"[{cut}:]")
    print(format_summary(result.summary, result.out_dir))
    if args.files_only:
        return 0
    return _demo_live(args, bundle, test_part, say)


def _demo_live(args: argparse.Namespace, bundle, ticks, say) -> int:
    import shutil  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from kafka import KafkaProducer  # noqa: PLC0415

    from pipeline import logs  # noqa: PLC0415
    from pipeline.broker import EmbeddedBroker, create_topics  # noqa: PLC0415
    from pipeline.config import RunConfig  # noqa: PLC0415
    from pipeline.live.runner import Runner  # noqa: PLC0415
    from pipeline.metrics import Metrics, MetricsServer  # noqa: PLC0415
    from pipeline.replay import replay  # noqa: PLC0415

    logs.configure("text", "warning")
    # The embedded broker starts empty every time: checkpoints of an earlier demo belong to offsets that no
    # longer exist.
    shutil.rmtree(Path(args.workdir) / "checkpoints", ignore_errors=True)
    with EmbeddedBroker() as broker:
        create_topics(broker.bootstrap, {"ticks": 2, "forecasts": 2, "ticks.dlq": 1})
        say(4, f"embedded Kafka-protocol broker on {broker.bootstrap}; topics ticks (2 partitions), forecasts, "
               "ticks.dlq")
        cfg = RunConfig.load(env={}, flags=dict(model=str(bundle.path), bootstrap_servers=broker.bootstrap,
                                                group_id="tickcast-demo", metrics_address=args.metrics_address,
                                                status_interval_s=1, max_batch_ms=20,
                                                checkpoint_uri=str(Path(args.workdir) / "checkpoints")))
        metrics = Metrics()
        server = MetricsServer(metrics, cfg.metrics_address).start()
        runner = Runner(cfg, bundle, metrics)
        span_s = (ticks.column("ts")[-1].as_py() - ticks.column("ts")[0].as_py()) / 1e9
        speed = max(span_s / args.live_seconds, 1e-9)
        say(5, f"replaying {ticks.num_rows:,} ticks at {speed:.1f}x real time (~{args.live_seconds:g} s) into "
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
    rejected = ", ".join(f"{k}" for k in sorted({k for k in _dead_reasons(metrics)})) or "none"
    print(file=sys.stderr)
    print(f"live: {s['ticks']:,} ticks consumed, {s['forecasts']:,} forecasts published, "
          f"{s['dead_letters']:,} dead letters ({rejected}) in {s['elapsed_s']} s")
    print(f"  latency tick received -> forecast acknowledged: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
          f"max {s['max_ms']} ms")
    print(f"  where to look: forecasts and dead letters were on topics `forecasts` and `ticks.dlq` of the "
          f"embedded broker (in memory, now stopped); files in {args.workdir}/; state checkpoints: "
          f"`tickcast state inspect {Path(args.workdir) / 'checkpoints'}`; run it yourself with "
          "`tickcast broker`, `tickcast run --help`, `tickcast replay --help`")
    return code


def _dead_reasons(metrics) -> list[str]:
    out = []
    for metric in metrics.dead_letters.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value > 0:
                out.append(sample.labels["reason"])
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "operator":
        from benchmarks.operator import run as bench_operator  # noqa: PLC0415

        results = bench_operator(quick=args.quick, batch_ticks=args.batch_ticks)
    elif args.what == "memory":
        from benchmarks.memory import run as bench_memory  # noqa: PLC0415

        modes = tuple(m for m in args.modes.split(",") if m)
        results = bench_memory(names_total=1_000_000 if args.quick else args.names, modes=modes)
    elif args.what == "startup":
        from benchmarks.startup import run as bench_startup  # noqa: PLC0415

        results = bench_startup(repeats=3 if args.quick else 7)
    elif args.what == "backtest":
        from benchmarks.backtest import run as bench_backtest  # noqa: PLC0415
        from pipeline import logs  # noqa: PLC0415

        logs.configure("text", "warning")
        results = bench_backtest(100_000 if args.quick else 300_000)
    elif args.what == "checkpoint":
        from benchmarks.checkpoint import exactly_once_cost  # noqa: PLC0415
        from benchmarks.checkpoint import run as bench_checkpoint  # noqa: PLC0415
        from pipeline import logs  # noqa: PLC0415

        logs.configure("text", "warning")
        sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
        results = bench_checkpoint(sizes)
        results["exactly_once"] = exactly_once_cost(20_000 if args.quick else 60_000)
    else:
        from benchmarks.e2e import run as bench_e2e  # noqa: PLC0415
        from pipeline import logs  # noqa: PLC0415

        logs.configure("text", "warning")
        results = bench_e2e(quick=args.quick, instruments=args.instruments, drain_minutes=args.drain_minutes,
                            bootstrap=args.bootstrap_servers)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


def _add_run_config_args(p: argparse.ArgumentParser) -> None:
    from dataclasses import MISSING, fields  # noqa: PLC0415

    from pipeline.config import RunConfig  # noqa: PLC0415

    p.add_argument("--config", default=None, metavar="FILE",
                   help="TOML config file; environment variables override it, flags override both")
    for f in fields(RunConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        shown = ",".join(default) if isinstance(default, list) else default
        if f.metadata.get("secret"):
            shown = "unset"
        choices = f.metadata.get("choices")
        extra = f" {{{', '.join(c for c in choices if c)}}}" if choices else ""
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="VALUE",
                       help=f"{f.metadata['help']}{extra} [env: TICKCAST_{f.name.upper()}] (default: {shown!r})")


def _run_config(args: argparse.Namespace):
    from dataclasses import fields  # noqa: PLC0415

    from pipeline.config import RunConfig  # noqa: PLC0415

    flags = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    return RunConfig.load(args.config, flags=flags)


def cmd_run(args: argparse.Namespace) -> int:
    from operators.bundle import load_bundle  # noqa: PLC0415
    from pipeline import logs  # noqa: PLC0415
    from pipeline.live.runner import Runner  # noqa: PLC0415
    from pipeline.metrics import Metrics, MetricsServer  # noqa: PLC0415

    cfg = _run_config(args)
    logs.configure(cfg.log_format, cfg.log_level)
    bundle = load_bundle(cfg.model)
    metrics = Metrics()
    try:
        server = MetricsServer(metrics, cfg.metrics_address).start()
    except OSError as exc:
        raise ConfigError(f"cannot listen on metrics_address {cfg.metrics_address}: {exc.strerror}; "
                          "pick another port with --metrics-address") from None
    log = logs.get("cli")
    log.info("starting", extra={"model_version": bundle.model_version, "metrics": f"http://{server.address}/metrics",
                                **{k: v for k, v in cfg.redacted().items() if k in
                                   ("bootstrap_servers", "group_id", "output_topic", "dead_letter_topic",
                                    "max_batch_ticks", "max_batch_ms", "output_mode", "output_format",
                                    "processing")}})
    runner = Runner(cfg, bundle, metrics)
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
    return code


def cmd_config_check(args: argparse.Namespace) -> int:
    from pipeline.checkpoint import CheckpointError, group_store, redact_uri  # noqa: PLC0415
    from pipeline.config import RunConfig  # noqa: PLC0415

    cfg = RunConfig.load(args.file, env={} if args.ignore_env else None)
    print(f"{args.file}: OK")
    for k, v in cfg.redacted().items():
        print(f"  {k} = {json.dumps(v)}")
    if not cfg.checkpoint_uri:
        print("checkpoint store: off (checkpoint_uri is empty)")
        return 0
    try:  # the group's folder, exactly as `tickcast run` derives it
        how = group_store(cfg.checkpoint_uri, cfg.group_id, cfg.checkpoint_keep).check_writable()
    except CheckpointError as exc:
        print(f"checkpoint store: NOT writable: {exc}")
        return 1
    print(f"checkpoint store: writable: {redact_uri(cfg.checkpoint_uri)}, group {cfg.group_id} ({how})")
    return 0


def _train_config(args: argparse.Namespace):
    from operators.training import TrainConfig  # noqa: PLC0415

    cfg = TrainConfig(layers=args.layers, hidden=args.hidden, horizon=args.horizon, epochs=args.epochs,
                      window=args.window, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      max_ticks=args.max_ticks, seed=args.seed)
    try:
        cfg.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def cmd_walkforward(args: argparse.Namespace) -> int:
    from pipeline.walkforward import run_walkforward  # noqa: PLC0415

    cfg = _train_config(args)
    if args.folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {args.folds}")
    ticks = _load_input(args)
    source = str(args.input) if args.input else f"kafka://{args.bootstrap_servers}/{args.topic}"
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        s = run_walkforward(ticks, args.folds, cfg, args.out, max_batch_ticks=args.max_batch_ticks,
                            source_name=source, say=say)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    c = s["confidence"]

    def ci(key, spec=".3e"):
        v = c[key]
        return f"{v['value']:{spec}} [{v['ci95'][0]:{spec}}, {v['ci95'][1]:{spec}}]" if v["ci95"] else "-"

    print(f"walk-forward over {args.folds} fold(s), {s['scored']:,} out-of-sample ticks scored")
    print(f"  MAE model          {ci('mae')}")
    print(f"  MAE random walk    {ci('mae_random_walk')}")
    print(f"  MAE model - rw     {ci('mae_minus_random_walk', '+.3e')}")
    print(f"  R^2 vs random walk {ci('r2_vs_random_walk', '+.4f')}")
    print(f"  hit rate           {ci('hit_rate', '.4f')}   IC {c['ic']['value']:.4f}")
    print(f"  report: {Path(args.out) / 'report.html'}; per fold: {Path(args.out) / 'folds.parquet'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq  # noqa: PLC0415

    from pipeline.analysis import compare  # noqa: PLC0415

    runs = []
    for d in (args.run_a, args.run_b):
        path = Path(d) / "forecasts.parquet"
        if not path.is_file():
            raise ConfigError(f"{d} holds no forecasts.parquet; give two `tickcast backtest --out` directories")
        runs.append((pq.read_table(path), json.loads((Path(d) / "summary.json").read_text())))
    try:
        c = compare(runs[0][0], runs[1][0])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    result = {"a": {"dir": args.run_a, "model_version": runs[0][1].get("model_version")},
              "b": {"dir": args.run_b, "model_version": runs[1][1].get("model_version")}, **c.to_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"A: {args.run_a} (model {result['a']['model_version']})")
    print(f"B: {args.run_b} (model {result['b']['model_version']})")
    print(f"  {c.n:,} ticks scored by both; paired, moving-block bootstrap ({c.block_ticks} ticks per block)")
    print(f"  MAE A {c.mae_a:.4e}   MAE B {c.mae_b:.4e}")
    print(f"  MAE(B) - MAE(A) = {c.diff:+.3e}, 95% interval [{c.ci95[0]:+.3e}, {c.ci95[1]:+.3e}], p = {c.p_value:.4f}")
    print(f"  {c.verdict}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.analysis import write_report  # noqa: PLC0415

    if not (Path(args.dir) / "forecasts.parquet").is_file():
        raise ConfigError(f"{args.dir} holds no forecasts.parquet; give a `tickcast backtest --out` directory")
    print(write_report(Path(args.dir)))
    return 0


def cmd_state_inspect(args: argparse.Namespace) -> int:
    from pipeline.checkpoint import CheckpointStore, redact_uri  # noqa: PLC0415

    store = CheckpointStore(args.dir)
    inventory = store.inventory()
    if not inventory:
        print(f"{redact_uri(args.dir)}: no checkpoints (expected <dir>/<group>/<topic>/<partition>/*.json)")
        return 1
    now = time.time()
    by_folder: dict[str, list] = {}
    for path, manifest, problem in inventory:
        by_folder.setdefault(path.rsplit("/", 1)[0], []).append((path, manifest, problem))
    rows, bad = [], 0
    for folder, items in sorted(by_folder.items()):
        good = [m for _, m, p in items if m is not None]
        problems = [(path, p) for path, m, p in items if p is not None]
        bad += len(problems)
        where = folder[len(store.root):].strip("/") if folder.startswith(store.root) else folder
        newest = max(good, key=lambda m: (m.offset, m.created_at)) if good else None
        rows.append({"partition": where, "checkpoints": len(items), "unusable": len(problems),
                     "offset": newest.offset if newest else None, "rows": newest.rows if newest else None,
                     "bytes": newest.bytes if newest else None,
                     "model_version": newest.model_version if newest else None,
                     "age_s": round(now - newest.created_at, 1) if newest else None,
                     "state": f"{newest.layers}x{newest.hidden}" if newest else None,
                     "problems": [f"{path.rsplit('/', 1)[1]}: {p}" for path, p in problems]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if not bad else 1

    def age(s):
        return "-" if s is None else (f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h")

    print(f"{'group/topic/partition':<44} {'offset':>12} {'rows':>10} {'size':>10} {'age':>7} {'model':<18} kept")
    for r in rows:
        size = "-" if r["bytes"] is None else f"{r['bytes'] / 2**20:.1f}MiB"
        print(f"{r['partition']:<44} {r['offset'] if r['offset'] is not None else '-':>12} "
              f"{r['rows'] if r['rows'] is not None else '-':>10} {size:>10} {age(r['age_s']):>7} "
              f"{r['model_version'] or '-':<18} {r['checkpoints']}")
        for problem in r["problems"]:
            print(f"    UNUSABLE {problem}")
    print(f"{len(rows)} partition(s), {sum(r['checkpoints'] for r in rows)} checkpoint(s), {bad} unusable"
          + ("; recovery skips unusable ones and falls back to the next older" if bad else ""))
    return 0 if not bad else 1


def cmd_broker(args: argparse.Namespace) -> int:
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from pipeline.broker import EmbeddedBroker, create_topics  # noqa: PLC0415

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedBroker(port=args.port, host=args.host) as broker:
        if args.topics:
            create_topics(broker.bootstrap, {t: args.partitions for t in args.topics.split(",")})
        print(broker.bootstrap, flush=True)
        print(f"embedded broker listening on {broker.bootstrap} (in memory; Ctrl-C stops it)", file=sys.stderr)
        stop.wait()
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from kafka import KafkaProducer  # noqa: PLC0415
    from kafka.errors import KafkaError  # noqa: PLC0415

    from pipeline.replay import replay  # noqa: PLC0415

    if args.speed < 0:
        raise ConfigError(f"--speed must be >= 0 (0 = as fast as possible), got {args.speed}")
    ticks = _load_input(args)
    try:
        producer = KafkaProducer(bootstrap_servers=args.bootstrap_servers.split(","), acks="all", linger_ms=5,
                                 batch_size=256 * 1024)
    except KafkaError as exc:
        raise ConfigError(f"cannot reach Kafka at {args.bootstrap_servers}: {exc}; is the broker running?") from None
    try:
        stats = replay(ticks, args.topic, producer, speed=args.speed, progress=not args.quiet)
    finally:
        producer.close(timeout=10)
    print(f"{stats.messages:,} ticks published to {args.topic} in {stats.seconds:.1f}s "
          f"({stats.messages / max(stats.seconds, 1e-9):,.0f}/s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tickcast", description="Streaming LSTM forecasts over tick data.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model bundle on a tick file or a topic's time range")
    _add_input_args(p)
    p.add_argument("--out", required=True, help="model bundle directory to write")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("walkforward", help="train on window k, backtest on window k+1, roll; one report")
    _add_input_args(p)
    p.add_argument("--out", required=True, help="output directory (a model and a backtest per fold, pooled report)")
    p.add_argument("--folds", type=int, default=3, help="test windows; the data is cut into folds+1 equal time "
                   "windows (default: 3)")
    p.add_argument("--max-batch-ticks", type=int, default=DEFAULT_MAX_BATCH_TICKS,
                   help=f"ticks per micro-batch (default: {DEFAULT_MAX_BATCH_TICKS})")
    _add_train_args(p)
    p.set_defaults(func=cmd_walkforward)
    _add_later_parsers(sub)
    return parser


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=1, help="LSTM layers (default: 1)")
    p.add_argument("--hidden", type=int, default=32, help="LSTM hidden size (default: 32)")
    p.add_argument("--horizon", type=int, default=10, help="forecast horizon in ticks of the instrument (default: 10)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    p.add_argument("--window", type=int, default=128, help="ticks per training sequence (default: 128)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per training step (default: 64)")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="Adam learning rate (default: 0.002)")
    p.add_argument("--max-ticks", type=int, default=400_000,
                   help="train on at most this many ticks, the first in the file (default: 400000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _add_later_parsers(sub) -> None:
    p = sub.add_parser("backtest", help="stream a tick file through the operator and score the forecasts")
    _add_input_args(p)
    p.add_argument("--model", required=True, help="model bundle directory (from `tickcast train`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-batch-ticks", type=int,
                   default=int(_env_default("MAX_BATCH_TICKS", DEFAULT_MAX_BATCH_TICKS)),
                   help="ticks per micro-batch [env: TICKCAST_MAX_BATCH_TICKS] "
                        f"(default: {DEFAULT_MAX_BATCH_TICKS})")
    p.add_argument("--reset-gap", default=None,
                   help="start an instrument afresh after a gap this long, e.g. 30m (default: never)")
    p.add_argument("--expire-after", default=None,
                   help="reclaim instruments idle this long, e.g. 1d; implies --reset-gap <= it (default: never)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("run", help="the long-running consumer: ticks from Kafka in, forecasts out",
                       description="Consume ticks from Kafka, publish forecasts, serve metrics. Every option can "
                                   "come from the config file, the environment or a flag (flags win).")
    _add_run_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("config", help="configuration tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    pc = csub.add_parser("check", help="validate a TOML config file and print it (secrets masked)")
    pc.add_argument("file")
    pc.add_argument("--ignore-env", action="store_true", help="check the file alone, without TICKCAST_* variables")
    pc.set_defaults(func=cmd_config_check)

    p = sub.add_parser("compare", help="two backtests of the same input side by side, with the significance of "
                       "the difference (candidate model vs the live one)")
    p.add_argument("run_a", help="backtest directory A (e.g. the live model)")
    p.add_argument("run_b", help="backtest directory B (e.g. the candidate)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="(re)build report.html of a backtest directory from its Parquet outputs")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("state", help="state checkpoint tools")
    ssub = p.add_subparsers(dest="state_command", required=True)
    ps = ssub.add_parser("inspect", help="what a checkpoint store holds: per partition the newest valid checkpoint's "
                         "offset, rows, size, age, model version; unusable ones and why (exit 1 if any)")
    ps.add_argument("dir", help="checkpoint_uri of the run (a directory or pyarrow.fs URI), or a group's folder in it")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.set_defaults(func=cmd_state_inspect)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (for demos and tests)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--topics", default=None, help="topics to create, comma-separated")
    p.add_argument("--partitions", type=int, default=1, help="partitions per created topic (default: 1)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("replay", help="publish a tick file to a topic, paced by event time")
    _add_input_args(p, topic=False)
    p.add_argument("--topic", required=True, help="topic to publish to")
    p.set_defaults(source_is_topic=False)
    p.add_argument("--bootstrap-servers", default=os.environ.get("TICKCAST_BOOTSTRAP_SERVERS", "localhost:9092"),
                   help="Kafka bootstrap servers [env: TICKCAST_BOOTSTRAP_SERVERS] (default: localhost:9092)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="replay gaps X times faster than real time; 0 = as fast as possible (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("generate", help="write synthetic ticks (Parquet)")
    p.add_argument("--out", required=True)
    p.add_argument("--instruments", type=int, default=50, help="number of instruments (default: 50)")
    p.add_argument("--ticks", type=int, default=200_000, help="number of ticks (default: 200000)")
    p.add_argument("--seed", type=int, default=7, help="random seed; same seed, same file (default: 7)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="generate ticks, train, backtest, then run live through an embedded broker")
    p.add_argument("--workdir", default=".demo", help="where to put the data, model and outputs (default: .demo)")
    p.add_argument("--instruments", type=int, default=50, help="synthetic instruments (default: 50)")
    p.add_argument("--ticks", type=int, default=200_000, help="synthetic ticks (default: 200000)")
    p.add_argument("--max-batch-ticks", type=int, default=DEFAULT_MAX_BATCH_TICKS,
                   help=f"file backtest micro-batch size (default: {DEFAULT_MAX_BATCH_TICKS})")
    p.add_argument("--files-only", action="store_true", help="stop after the file backtest (no broker)")
    p.add_argument("--retrain", action="store_true", help="train a new model even if one is in --workdir")
    p.add_argument("--live-seconds", type=float, default=20.0, help="how long the live replay lasts (default: 20)")
    p.add_argument("--metrics-address", default="127.0.0.1:9108",
                   help="where the demo serves /metrics (default: 127.0.0.1:9108)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    p.add_argument("what", choices=["operator", "e2e", "checkpoint", "backtest", "memory", "startup"], help="which benchmark")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--quick", action="store_true", help="fewer, shorter runs (smoke check)")
    p.add_argument("--batch-ticks", type=int, default=10_000,
                   help="operator: ticks per micro-batch (default: 10000)")
    p.add_argument("--instruments", type=int, default=1_000, help="e2e: instruments (default: 1000)")
    p.add_argument("--drain-minutes", type=float, default=0.0,
                   help="e2e: also drain a backlog this long and sample RSS every second (default: 0, skip)")
    p.add_argument("--bootstrap-servers", default=None,
                   help="e2e: use this Kafka instead of the embedded broker")
    p.add_argument("--names", type=int, default=10_000_000,
                   help="memory: distinct instrument names to stream (default: 10000000; --quick: 1000000)")
    p.add_argument("--modes", default="expire,limit",
                   help="memory: runs, comma-separated, of expire, limit, baseline (default: expire,limit)")
    p.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TickcastError as exc:
        print(f"tickcast: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tickcast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
