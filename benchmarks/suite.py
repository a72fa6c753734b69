"""``tickcast bench WHAT``: which benchmark runs, with what size; each prints its own figures."""

from __future__ import annotations

BENCHMARKS = ("operator", "operator-profile", "e2e", "checkpoint", "backtest", "memory", "startup")


def run_benchmark(what: str, *, quick: bool = False, batch_ticks: int = 10_000, instruments: int = 1_000,
                  drain_minutes: float = 0.0, bootstrap_servers: str | None = None, names: int = 10_000_000,
                  modes: tuple[str, ...] = ("expire", "limit"), sizes: tuple[int, ...] | None = None,
                  layers: tuple[int, ...] | None = None, activities: tuple[str, ...] | None = None,
                  pin_cores: bool = False) -> dict:
    """Run one benchmark (``quick``: fewer, shorter runs) and return its figures. ``sizes``, ``layers`` and
    ``activities`` select the operator benchmark's cases (None: all of its default cases)."""
    if what == "operator":
        from benchmarks.operator import run as bench_operator  # noqa: PLC0415

        return bench_operator(quick=quick, batch_ticks=batch_ticks, instrument_counts=list(sizes) if sizes else None,
                              layer_counts=list(layers) if layers else None, activities=activities)
    if what == "operator-profile":
        from benchmarks.operator_profile import run as bench_profile  # noqa: PLC0415

        return bench_profile(sizes=list(sizes) if sizes else None, layer_counts=list(layers) if layers else None,
                             activities=activities, quick=quick, batch_ticks=batch_ticks)
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
        return bench_backtest(100_000 if quick else 300_000)
    if what == "checkpoint":
        from benchmarks.checkpoint import exactly_once_cost  # noqa: PLC0415
        from benchmarks.checkpoint import run as bench_checkpoint  # noqa: PLC0415

        logs.configure("text", "warning")
        results = bench_checkpoint((10_000, 100_000) if quick else (10_000, 100_000, 1_000_000))
        results["exactly_once"] = exactly_once_cost(20_000 if quick else 60_000)
        return results
    from benchmarks.e2e import run as bench_e2e  # noqa: PLC0415

    logs.configure("text", "warning")
    return bench_e2e(quick=quick, instruments=instruments, drain_minutes=drain_minutes, bootstrap=bootstrap_servers,
                     pin_cores=pin_cores)
