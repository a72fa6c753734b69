"""Flags that several ``tickcast`` commands share (ticks in, training, the run config, benchmarks), the
training config they make, and the parsers of list-valued flags."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import MISSING, fields

from operators.features import FEATURE_NAMES, KNOWN_FEATURES
from pipeline.config import ConfigError, RunConfig
from pipeline.ranges import FLAG_RANGES, RANGES


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", type=int, default=1, help="recurrent layers (default: 1)")
    p.add_argument("--hidden", type=int, default=32, help="units per recurrent layer (default: 32)")
    p.add_argument("--horizon", type=int, default=10, help="forecast horizon in ticks of the instrument (default: 10)")
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"], help="recurrent cell (default: lstm)")
    p.add_argument("--horizons", default="", metavar="H1,H2,...", help="several outputs: a forecast per horizon "
                   "(overrides --horizon), e.g. 1,10,100")
    p.add_argument("--quantiles", default="", metavar="Q1,Q2,...", help="per horizon also these quantiles "
                   "(pinball loss), e.g. 0.1,0.9")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    p.add_argument("--window", type=int, default=128, help="ticks per training sequence (default: 128)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per training step (default: 64)")
    p.add_argument("--learning-rate", type=ranged_float("learning_rate"), default=2e-3,
                   help=f"Adam learning rate [range: {FLAG_RANGES['learning_rate'].describe().strip()}] (default: 0.002)")
    p.add_argument("--max-ticks", type=int, default=400_000,
                   help="train on at most this many ticks, the first in the file (default: 400000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--features", default=",".join(FEATURE_NAMES), metavar="F1,F2,...",
                   help=f"the model's inputs in order, from: {', '.join(KNOWN_FEATURES)} (docs/features.md; "
                        f"default: {','.join(FEATURE_NAMES)})")


def train_config(args: argparse.Namespace):
    from operators.training import TrainConfig  # noqa: PLC0415

    try:
        cfg = TrainConfig.with_outputs(args.horizons, args.quantiles, layers=args.layers, hidden=args.hidden,
                                       horizon=args.horizon, epochs=args.epochs, window=args.window,
                                       batch_size=args.batch_size, learning_rate=args.learning_rate,
                                       max_ticks=args.max_ticks, seed=args.seed, cell=args.cell,
                                       features=tuple(n.strip() for n in args.features.split(",") if n.strip()))
        cfg.check()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def add_input_args(p: argparse.ArgumentParser, topic: bool = True, flag: str = "--input") -> None:
    p.add_argument(flag, dest="input", default=None, required=not topic,
                   help="tick file or directory (Parquet, CSV, or a vendor layout)")
    if topic:
        p.add_argument("--topic", default=None,
                       help="read ticks from this Kafka topic instead (manual assignment: no group, no commits); "
                            "--from/--to select by record timestamp")
        p.add_argument("--bootstrap-servers", default=os.environ.get("TICKCAST_BOOTSTRAP_SERVERS", "localhost:9092"),
                       help="Kafka for --topic [env: TICKCAST_BOOTSTRAP_SERVERS] (default: localhost:9092)")
        p.add_argument("--kafka-client", default=os.environ.get("TICKCAST_KAFKA_CLIENT", "kafka-python"),
                       help="client library for --topic: kafka-python or confluent (librdkafka, pip install "
                            "'tickcast[confluent]') [env: TICKCAST_KAFKA_CLIENT] (default: kafka-python)")
    p.add_argument("--format", default="auto",
                   help="input format: auto, parquet, csv, lean-equity, lean-fx, lobster, binance-gz, nautilus "
                        "(default: auto, from the path)")
    p.add_argument("--map", default=None, metavar="CANON=SOURCE,...",
                   help="column mapping for Parquet/CSV, e.g. --map instrument=sym,price=last,ts=time")
    p.add_argument("--instrument", default=None, help="instrument name for single-instrument files without one")
    p.add_argument("--price-scale", type=ranged_float("price_scale"), default=1.0,
                   help="multiply prices by this (e.g. 0.0001)")
    p.add_argument("--ts-unit", default="ns", choices=["s", "ms", "us", "ns"],
                   help="unit of integer timestamps in Parquet/CSV (default: ns)")
    p.add_argument("--from", dest="time_from", default=None, metavar="TIME",
                   help="keep ticks at or after this UTC time (ISO 8601, e.g. 2013-10-09)")
    p.add_argument("--to", dest="time_to", default=None, metavar="TIME",
                   help="keep ticks before this UTC time (ISO 8601)")


def add_run_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="TOML config file; environment variables override it, flags override both")
    for f in fields(RunConfig):
        if f.name == "candidates":
            add_candidate_arg(p)
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        shown = ",".join(default) if isinstance(default, list) else default
        if f.metadata.get("secret"):
            shown = "unset"
        choices = f.metadata.get("choices")
        extra = f" {{{', '.join(c for c in choices if c)}}}" if choices else ""
        if f.name in RANGES:
            extra += f" [range: {RANGES[f.name].describe()}]"
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar="VALUE",
                       help=f"{f.metadata['help']}{extra} [env: TICKCAST_{f.name.upper()}] (default: {shown!r})")


def add_candidate_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--candidate DIR``, repeatable, into ``args.candidates`` (a list of directories, or None when not given):
    the one definition for every command that steps candidate models beside the primary (``run`` here, where
    RunConfig takes the list; a command without RunConfig passes its own ``help``)."""
    if help is None:
        meta = next(f.metadata for f in fields(RunConfig) if f.name == "candidates")
        help = f"{meta['help']} [env: TICKCAST_CANDIDATES] (default: none)"
    p.add_argument("--candidate", dest="candidates", action="append", default=None, metavar="DIR", help=help)


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--quick", action="store_true", help="fewer, shorter runs (smoke check)")
    p.add_argument("--batch-ticks", type=int, default=10_000,
                   help="operator: ticks per micro-batch (default: 10000)")
    p.add_argument("--sizes", default=None, metavar="N,...",
                   help="operator: instrument counts (default: 10,1000,10000,100000,1000000; --quick: 10,1000); "
                        "operator-profile: (default: 100000,1000000)")
    p.add_argument("--layers", default=None, metavar="N,...", help="operator: LSTM layer counts (default: 1,2)")
    p.add_argument("--activities", default=None, metavar="KIND,...",
                   help="operator: uniform, zipf or both (default: uniform,zipf; operator-profile: uniform)")
    p.add_argument("--instruments", type=int, default=1_000, help="e2e: instruments (default: 1000)")
    p.add_argument("--drain-minutes", type=float, default=0.0,
                   help="e2e: also drain a backlog this long and sample RSS every second (default: 0, skip)")
    p.add_argument("--bootstrap-servers", default=None,
                   help="e2e: use this Kafka instead of the embedded broker")
    p.add_argument("--pin-cores", action="store_true",
                   help="e2e: the embedded broker and the load generator on CPU 0, the pipeline on the rest "
                        "(needs 2 or more CPUs)")
    p.add_argument("--names", type=int, default=10_000_000,
                   help="memory: distinct instrument names to stream (default: 10000000; --quick: 1000000)")
    p.add_argument("--modes", default="expire,limit",
                   help="memory: runs, comma-separated, of expire, limit, baseline (default: expire,limit)")


def int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


def choices(text: str | None, flag: str, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    if text is None:
        return None
    values = tuple(text.split(","))
    wrong = [v for v in values if v not in allowed]
    if wrong:
        raise ConfigError(f"{flag} takes a comma-separated subset of {', '.join(allowed)}, got {text!r}")
    return values


def ranged_float(name: str):
    """An argparse type: a finite float inside ``FLAG_RANGES[name]`` (argparse says what is wrong in one line)."""
    r = FLAG_RANGES[name]

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or not r.lo <= value <= r.hi:
            raise argparse.ArgumentTypeError(f"{text!r} is outside {r.describe().strip()} ({r.why})")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse
