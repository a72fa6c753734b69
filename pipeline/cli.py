"""The ``tickcast`` command line: parses flags, turns them into arguments, calls one function, prints.

Each ``cmd_*`` converts its flags into plain arguments or a config and calls the
module that owns the work (``pipeline.inputs``, ``pipeline.evaluation.backtest``,
``pipeline.demo``, ``pipeline.checkpoint``, ...); what it prints comes from
``pipeline.console``. Nothing else lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

from operators.errors import TickcastError
from operators.features import KNOWN_FEATURES
from pipeline import console
from pipeline.config import DEFAULT_MAX_BATCH_TICKS, ConfigError, RunConfig, check_kafka_client, parse_duration_ns
from pipeline.flags import (add_bench_args, add_candidate_arg, add_input_args, add_run_config_args, add_train_args,
                            choices, int_list, train_config)
from pipeline.inputs import TickInput, load_ticks


def _tick_input(args: argparse.Namespace) -> TickInput:
    return TickInput(path=args.input, topic=args.topic if getattr(args, "source_is_topic", True) else None,
                     bootstrap_servers=getattr(args, "bootstrap_servers", "localhost:9092"),
                     kafka_client=getattr(args, "kafka_client", "kafka-python"), format=args.format,
                     mapping=args.map, instrument=args.instrument, price_scale=args.price_scale, ts_unit=args.ts_unit,
                     time_from=args.time_from, time_to=args.time_to, quiet=getattr(args, "quiet", False))


def _forecaster_config(args: argparse.Namespace):
    from operators.forecaster import ForecasterConfig  # noqa: PLC0415

    return ForecasterConfig(
        reset_gap_ns=parse_duration_ns(args.reset_gap, "--reset-gap") if args.reset_gap else None,
        expire_after_ns=parse_duration_ns(args.expire_after, "--expire-after") if args.expire_after else None,
        engine=args.engine,
    )


def _run_config(args: argparse.Namespace):
    flags = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    return RunConfig.load(args.config, flags=flags)


def cmd_train(args: argparse.Namespace) -> int:
    from operators.bundle import save_bundle  # noqa: PLC0415
    from operators.training import train  # noqa: PLC0415

    cfg = train_config(args)
    source = _tick_input(args)
    ticks = load_ticks(source).ticks
    print(console.format_training_start(ticks.num_rows, cfg), file=sys.stderr)
    started = time.perf_counter()
    bundle = train(ticks, cfg, source=source.name(), on_epoch=lambda epoch, logs: print(
        console.format_epoch(epoch, cfg.epochs, logs, time.perf_counter() - started), file=sys.stderr))
    path = save_bundle(bundle, args.out)
    print(console.format_trained(bundle, path, time.perf_counter() - started))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from pipeline.bundle_command import bundle_keras, describe_bundle  # noqa: PLC0415

    bundle, path = bundle_keras(args.keras, args.features, _tick_input(args), args.out, args.horizon, args.target_scale,
                                args.outputs)
    print(describe_bundle(bundle, path))
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from operators.bundle import load_bundle  # noqa: PLC0415
    from pipeline.candidates import load_candidates  # noqa: PLC0415
    from pipeline.evaluation.backtest import run_backtest  # noqa: PLC0415

    if args.max_batch_ticks < 1:
        raise ConfigError(f"--max-batch-ticks must be >= 1, got {args.max_batch_ticks}")
    config = _forecaster_config(args)
    bundle = load_bundle(args.model)
    candidates = load_candidates(bundle, args.candidates or [])
    source = _tick_input(args)
    loaded = load_ticks(source)
    result = run_backtest(loaded.ticks, bundle, args.out, max_batch_ticks=args.max_batch_ticks, config=config,
                          source_name=source.name(with_range=True), plots=not args.no_plots, progress=not args.quiet,
                          undecodable=loaded.undecodable, candidates=candidates)
    print(console.format_summary(result.summary, result.out_dir))
    return 0


def cmd_walkforward(args: argparse.Namespace) -> int:
    from pipeline.evaluation.walkforward import run_walkforward  # noqa: PLC0415

    cfg = train_config(args)
    if args.folds < 1:
        raise ConfigError(f"--folds must be >= 1, got {args.folds}")
    source = _tick_input(args)
    ticks = load_ticks(source).ticks
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        s = run_walkforward(ticks, args.folds, cfg, args.out, max_batch_ticks=args.max_batch_ticks,
                            source_name=source.name(), say=say)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(json.dumps(s, indent=2) if args.json else console.format_walkforward(s, args.folds, args.out))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.evaluation.report import compare_runs  # noqa: PLC0415

    per_output, version_a, version_b = compare_runs(args.run_a, args.run_b)
    several = per_output[0][0] is not None
    if args.json:
        scores = {"outputs": {n: c.to_dict() for n, c in per_output}} if several else per_output[0][1].to_dict()
        print(json.dumps({"a": {"dir": args.run_a, "model_version": version_a},
                          "b": {"dir": args.run_b, "model_version": version_b}, **scores}, indent=2))
        return 0
    print(console.format_comparisons(per_output, args.run_a, args.run_b, version_a, version_b) if several else
          console.format_comparison(per_output[0][1], args.run_a, args.run_b, version_a, version_b))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.evaluation.report import write_report  # noqa: PLC0415

    if not (Path(args.dir) / "forecasts.parquet").is_file():
        raise ConfigError(f"{args.dir} holds no forecasts.parquet; give a `tickcast backtest --out` directory")
    print(write_report(Path(args.dir)))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.files.sinks import write_parquet  # noqa: PLC0415
    from pipeline.files.synthetic import generate_ticks  # noqa: PLC0415

    table = generate_ticks(args.instruments, args.ticks, seed=args.seed)
    write_parquet(table, Path(args.out))
    print(f"{table.num_rows:,} synthetic ticks over {args.instruments} instruments written to {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo  # noqa: PLC0415

    return run_demo(args.workdir, instruments=args.instruments, ticks=args.ticks, max_batch_ticks=args.max_batch_ticks,
                    files_only=args.files_only, retrain=args.retrain, live_seconds=args.live_seconds,
                    metrics_address=args.metrics_address)


def _exit_on_sigterm(signum, _frame) -> None:
    """A benchmark stopped with SIGTERM: stop the embedded broker it started, then end the process at once.
    Raising SystemExit instead is lost when the signal lands in a finalizer (a garbage collection runs them),
    and the clients the benchmark was using may hold threads or exit hooks that wait on the stopped broker."""
    from pipeline.kafka.broker import stop_all  # noqa: PLC0415

    stop_all()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.suite import case_options, run_benchmark  # noqa: PLC0415

    if args.pin_cores and (args.what != "e2e" or args.bootstrap_servers or len(os.sched_getaffinity(0)) < 2):
        raise ConfigError("--pin-cores is for `bench e2e` on the embedded broker with 2 or more CPUs")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a benchmark's own broker is stopped on the way out
    results = run_benchmark(args.what, quick=args.quick, batch_ticks=args.batch_ticks, instruments=args.instruments,
                            drain_minutes=args.drain_minutes, bootstrap_servers=args.bootstrap_servers,
                            names=args.names, modes=tuple(m for m in args.modes.split(",") if m),
                            sizes=int_list(args.sizes, "--sizes"), layers=int_list(args.layers, "--layers"),
                            activities=choices(args.activities, "--activities", ("uniform", "zipf")),
                            pin_cores=args.pin_cores, **case_options(args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run_command import run_live  # noqa: PLC0415

    return run_live(_run_config(args))


def cmd_config_check(args: argparse.Namespace) -> int:
    from pipeline.config_command import check_config  # noqa: PLC0415

    return check_config(args.file, ignore_env=args.ignore_env)


def cmd_state_inspect(args: argparse.Namespace) -> int:
    from pipeline.state_command import inspect_store  # noqa: PLC0415

    return inspect_store(args.dir, as_json=args.json)


def cmd_models_status(args: argparse.Namespace) -> int:
    from pipeline.models_status import format_status, metrics_url, read_status  # noqa: PLC0415

    url = args.metrics_url or metrics_url(RunConfig.load(args.config, check=False).metrics_address)
    print(format_status(read_status(url)))
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from pipeline.kafka.broker import serve_broker  # noqa: PLC0415

    serve_broker(args.port, args.host, args.topics.split(",") if args.topics else [], args.partitions)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.kafka.replay import replay_to_kafka  # noqa: PLC0415

    if args.speed < 0:
        raise ConfigError(f"--speed must be >= 0 (0 = as fast as possible), got {args.speed}")
    security = RunConfig.load_kafka_security(args.config)
    check_kafka_client(args.kafka_client, "--kafka-client")
    ticks = load_ticks(_tick_input(args)).ticks
    stats = replay_to_kafka(ticks, args.topic, args.bootstrap_servers, speed=args.speed, progress=not args.quiet,
                            security=security, kafka_client=args.kafka_client)
    print(f"{stats.messages:,} ticks published to {args.topic} in {stats.seconds:.1f}s "
          f"({stats.messages / max(stats.seconds, 1e-9):,.0f}/s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tickcast", description="Streaming LSTM forecasts over tick data.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model bundle on a tick file or a topic's time range")
    add_input_args(p)
    p.add_argument("--out", required=True, help="model bundle directory to write")
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("walkforward", help="train on window k, backtest on window k+1, roll; one report")
    add_input_args(p)
    p.add_argument("--out", required=True, help="output directory (a model and a backtest per fold, pooled report)")
    p.add_argument("--folds", type=int, default=3, help="test windows; the data is cut into folds+1 equal time "
                   "windows (default: 3)")
    p.add_argument("--max-batch-ticks", type=int, default=DEFAULT_MAX_BATCH_TICKS,
                   help=f"ticks per micro-batch (default: {DEFAULT_MAX_BATCH_TICKS})")
    p.add_argument("--json", action="store_true", help="print summary.json (per output if several) instead of a table")
    add_train_args(p)
    p.set_defaults(func=cmd_walkforward)

    p = sub.add_parser("bundle", help="wrap a Keras model trained elsewhere into a model bundle")
    p.add_argument("--keras", required=True, metavar="MODEL.keras", help="the Keras 3 model file")
    p.add_argument("--features", required=True, metavar="F1,F2,...", help="the model's inputs in order, from: "
                   f"{', '.join(KNOWN_FEATURES)} (docs/features.md)")
    p.add_argument("--out", required=True, help="model bundle directory to write")
    p.add_argument("--horizon", type=int, default=10, help="forecast horizon in ticks of the instrument (default: 10)")
    p.add_argument("--outputs", default="", metavar="NAME:H[:Q],...", help="what each model output forecasts: "
                   "the log return over H ticks (its mean, or its Q-quantile), e.g. h1:1,h10:10,h10_q0.9:10:0.9 "
                   "(default: one output at --horizon)")
    p.add_argument("--target-scale", default="fitted", choices=["fitted", "none"], help="fitted: outputs are "
                   "normalised log returns (statistics fitted on the ticks); none: used as they are (default: fitted)")
    add_input_args(p, topic=False, flag="--fit-normalisation-on")
    p.set_defaults(func=cmd_bundle, source_is_topic=False)
    _add_later_parsers(sub)
    return parser


def _add_later_parsers(sub) -> None:
    p = sub.add_parser("backtest", help="stream a tick file through the operator and score the forecasts")
    add_input_args(p)
    p.add_argument("--model", required=True, help="model bundle directory (from `tickcast train`)")
    add_candidate_arg(p, help="a candidate model bundle, stepped over the same ticks with its own state and "
                      "compared with --model (repeatable; its forecasts in OUT/candidates/<model_version>/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-batch-ticks", type=int,
                   default=int(os.environ.get("TICKCAST_MAX_BATCH_TICKS", DEFAULT_MAX_BATCH_TICKS)),
                   help="ticks per micro-batch [env: TICKCAST_MAX_BATCH_TICKS] "
                        f"(default: {DEFAULT_MAX_BATCH_TICKS})")
    p.add_argument("--reset-gap", default=None,
                   help="start an instrument afresh after a gap this long, e.g. 30m (default: never)")
    p.add_argument("--expire-after", default=None,
                   help="reclaim instruments idle this long, e.g. 1d; implies --reset-gap <= it (default: never)")
    p.add_argument("--engine", default="auto", choices=["auto", "kernel", "keras"],
                   help="what steps the model: kernel (NumPy), keras (needs TensorFlow), or auto: the kernel when "
                        "it computes every layer, else keras (default: auto; the choice is printed)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_backtest)

    p = sub.add_parser("run", help="the long-running consumer: ticks from Kafka in, forecasts out",
                       description="Consume ticks from Kafka, publish forecasts, serve metrics. Every option can "
                                   "come from the config file, the environment or a flag (flags win).")
    add_run_config_args(p)
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

    p = sub.add_parser("models", help="the models of a run: the primary and its candidates")
    msub = p.add_subparsers(dest="models_command", required=True)
    pm = msub.add_parser("status", help="each model's role, run time and scores, and each candidate's paired "
                         "difference to the primary with its interval, from a run's metrics endpoint")
    pm.add_argument("--metrics-url", default=None, metavar="URL", help="the run's metrics, e.g. "
                    "http://host:9108/metrics (default: the configured metrics_address's port on localhost)")
    pm.add_argument("--config", default=None, metavar="FILE", help="TOML config file whose metrics_address gives "
                    "the default URL; TICKCAST_METRICS_ADDRESS overrides it")
    pm.set_defaults(func=cmd_models_status)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (for demos and tests)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--topics", default=None, help="topics to create, comma-separated")
    p.add_argument("--partitions", type=int, default=1, help="partitions per created topic (default: 1)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("replay", help="publish a tick file to a topic, paced by event time")
    add_input_args(p, topic=False)
    p.add_argument("--topic", required=True, help="topic to publish to")
    p.set_defaults(source_is_topic=False)
    p.add_argument("--bootstrap-servers", default=os.environ.get("TICKCAST_BOOTSTRAP_SERVERS", "localhost:9092"),
                   help="Kafka bootstrap servers [env: TICKCAST_BOOTSTRAP_SERVERS] (default: localhost:9092)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="replay gaps X times faster than real time; 0 = as fast as possible (default: 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="TOML config file whose Kafka security settings (security_protocol, ssl_*, sasl_*) apply; "
                        "TICKCAST_<KEY> environment variables override it")
    p.add_argument("--kafka-client", default=os.environ.get("TICKCAST_KAFKA_CLIENT", "kafka-python"),
                   help="client library: kafka-python or confluent (librdkafka, pip install 'tickcast[confluent]') "
                        "[env: TICKCAST_KAFKA_CLIENT] (default: kafka-python)")
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

    # The product does not import its benchmarks at module level: only the bench command's flags come from there.
    from benchmarks.suite import BENCHMARKS, add_case_args  # noqa: PLC0415

    p = sub.add_parser("bench", help="benchmarks that print figures")
    p.add_argument("what", choices=list(BENCHMARKS), help="which benchmark")
    add_bench_args(p)
    add_case_args(p)
    p.set_defaults(func=cmd_bench)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TickcastError as exc:
        for line in str(exc).splitlines() or [""]:  # one line per problem (config check lists them all)
            print(f"tickcast: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tickcast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
