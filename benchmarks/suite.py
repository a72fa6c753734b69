"""``tickcast bench WHAT``: which benchmark runs, with what size; each prints its own figures."""

from __future__ import annotations

import argparse

BENCHMARKS = ("operator", "operator-profile", "e2e", "checkpoint", "backtest", "memory", "startup")
PEERS = ("keras", "onnx")


def add_case_args(p: argparse.ArgumentParser) -> None:
    """The flags that choose the operator and backtest benchmarks' cases (beside ``pipeline.flags``' own)."""
    p.add_argument("--hidden", default=None, metavar="N,...",
                   help="operator: hidden sizes (default: 32,64 for fewer than 100 instruments, else 64); "
                        "backtest: the first one (default: 64)")
    p.add_argument("--peers", default=None, metavar="KIND,...",
                   help="operator: the bucketed peers, keras and/or onnx (ONNX Runtime, from the bench extra) "
                        "(default: both; keras alone when onnxruntime is not installed)")
    p.add_argument("--ort-threads", type=int, default=1,
                   help="operator: intra-op threads of the ONNX Runtime peer, 1 or 2 (default: 1)")
    p.add_argument("--cases-only", action="store_true",
                   help="operator: only the cases' table (no memory, GRU or custom-model figures)")
    p.add_argument("--candidates", default=None, metavar="K,...",
                   help="operator: instead of the peers, the cost of candidate models: the primary alone and with K "
                        "candidates of its shape, over the same cases (e.g. 0,1,2; 0 is always measured); e2e: "
                        "instead of the e2e figures, the live loop draining the same backlog with K candidates "
                        "(their forecasts on a shadow topic)")
    p.add_argument("--ticks", type=int, default=None,
                   help="backtest: ticks in the file, synthetic over --instruments instruments (default: 300000; "
                        "--quick: 100000)")
    p.add_argument("--skip-topic", action="store_true", help="backtest: the file backtest only, no broker")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="backtest: read the first --ticks ticks of this tick file or folder in place "
                        "(default: synthetic ticks over --instruments)")
    # pipeline.flags' --batch-ticks, --sizes, --layers: an unset flag keeps each case family's own default
    # (benchmarks.operator_cases); argparse has no public way to amend an added argument
    actions = {a.dest: a for a in p._actions}
    actions["batch_ticks"].default = None
    actions["batch_ticks"].help = ("operator: ticks per micro-batch (default: 5000 for fewer than 100 instruments, "
                                   "else 10000); operator-profile, backtest: (default: 10000)")
    actions["sizes"].help = ("operator: instrument counts (default: 4,10,1000,10000,100000,1000000; --quick: 4,1000); "
                             "operator-profile: (default: 100000,1000000)")
    actions["layers"].help = ("operator: LSTM layer counts (default: 1 for fewer than 100 instruments, else 1,2); "
                              "backtest: the first one (default: 1)")


def case_options(args: argparse.Namespace) -> dict:
    """The flags of :func:`add_case_args` as :func:`run_benchmark`'s keywords; a bad value is a ConfigError."""
    from pipeline.config import ConfigError  # noqa: PLC0415
    from pipeline.flags import choices, int_list  # noqa: PLC0415

    peers = choices(args.peers, "--peers", PEERS)
    if peers and "onnx" in peers:
        from benchmarks.operator import onnx_runtime_available  # noqa: PLC0415

        if not onnx_runtime_available():
            raise ConfigError("--peers onnx needs onnx and onnxruntime: pip install 'tickcast[bench]'")
    if args.ort_threads not in (1, 2):
        raise ConfigError(f"--ort-threads takes 1 or 2, got {args.ort_threads}")
    for flag, value in (("--batch-ticks", args.batch_ticks), ("--ticks", args.ticks)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    candidates = None
    if args.candidates is not None:  # int_list takes positive integers; here 0 (the primary alone) is a count too
        try:
            candidates = tuple(int(v) for v in args.candidates.split(","))
        except ValueError:
            candidates = (-1,)
        if min(candidates) < 0:
            raise ConfigError(f"--candidates takes comma-separated counts >= 0, got {args.candidates!r}")
    return {"hidden": int_list(args.hidden, "--hidden"), "peers": peers, "candidates": candidates,
            "ort_threads": args.ort_threads,
            "cases_only": args.cases_only, "ticks": args.ticks, "topic": not args.skip_topic, "data": args.data}


def run_benchmark(what: str, *, quick: bool = False, batch_ticks: int | None = None, instruments: int = 1_000,
                  drain_minutes: float = 0.0, bootstrap_servers: str | None = None, names: int = 10_000_000,
                  modes: tuple[str, ...] = ("expire", "limit"), sizes: tuple[int, ...] | None = None,
                  layers: tuple[int, ...] | None = None, activities: tuple[str, ...] | None = None,
                  pin_cores: bool = False, hidden: tuple[int, ...] | None = None, peers: tuple[str, ...] | None = None,
                  ort_threads: int = 1, cases_only: bool = False, ticks: int | None = None, topic: bool = True,
                  data: str | None = None, candidates: tuple[int, ...] | None = None) -> dict:
    """Run one benchmark (``quick``: fewer, shorter runs) and return its figures. ``sizes``, ``layers``,
    ``activities``, ``hidden`` and ``batch_ticks`` select the operator benchmark's cases (None: each case
    family's defaults, :mod:`benchmarks.operator_cases`); ``peers``, ``ort_threads`` and ``cases_only`` what
    it measures; ``candidates`` (candidate counts) measures the cost of candidate models instead. The backtest
    benchmark takes ``ticks``, ``instruments``, ``batch_ticks``, the first of ``hidden`` and ``layers``,
    ``topic`` and ``data``. The e2e benchmark takes ``candidates`` too (the live loop with that many candidate
    models instead of its other figures)."""
    if what == "operator":
        from benchmarks.operator import run as bench_operator  # noqa: PLC0415

        return bench_operator(quick=quick, batch_ticks=batch_ticks, instrument_counts=list(sizes) if sizes else None,
                              layer_counts=list(layers) if layers else None, activities=activities, hidden=hidden,
                              peers=peers, ort_threads=ort_threads, cases_only=cases_only, candidates=candidates)
    if what == "operator-profile":
        from benchmarks.operator_profile import run as bench_profile  # noqa: PLC0415

        return bench_profile(sizes=list(sizes) if sizes else None, layer_counts=list(layers) if layers else None,
                             activities=activities, quick=quick, batch_ticks=batch_ticks or 10_000)
    if what == "memory":
        from benchmarks.memory import run as bench_memory  # noqa: PLC0415

        return bench_memory(names_total=1_000_000 if quick else names, modes=modes)
    if what == "startup":
        from benchmarks.startup import run as bench_startup  # noqa: PLC0415

        return bench_startup(repeats=3 if quick else 7)
    from pipeline import logs  # noqa: PLC0415

    if what == "backtest":
        from benchmarks.backtest import run as bench_backtest  # noqa: PLC0415

        logs.configure("text", "warning")
        return bench_backtest(ticks or (100_000 if quick else 300_000), instruments, batch_ticks or 10_000,
                              hidden=hidden[0] if hidden else 64, layers=layers[0] if layers else 1, topic=topic,
                              data=data)
    if what == "checkpoint":
        from benchmarks.checkpoint import exactly_once_cost  # noqa: PLC0415
        from benchmarks.checkpoint import run as bench_checkpoint  # noqa: PLC0415

        logs.configure("text", "warning")
        results = bench_checkpoint((10_000, 100_000) if quick else (10_000, 100_000, 1_000_000))
        results["exactly_once"] = exactly_once_cost(20_000 if quick else 60_000)
        return results
    logs.configure("text", "warning")
    if candidates is not None:
        from benchmarks.e2e_candidates import run as bench_e2e_candidates  # noqa: PLC0415

        return bench_e2e_candidates(candidates, quick=quick, instruments=instruments, bootstrap=bootstrap_servers,
                                    pin_cores=pin_cores)
    from benchmarks.e2e import run as bench_e2e  # noqa: PLC0415

    return bench_e2e(quick=quick, instruments=instruments, drain_minutes=drain_minutes, bootstrap=bootstrap_servers,
                     pin_cores=pin_cores)
