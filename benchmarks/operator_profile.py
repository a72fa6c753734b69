"""`tickcast bench operator-profile`: where one micro-batch's time goes inside ``Forecaster.step``.

The benchmark's streams (10,000-tick batches, every instrument warmed up with a
row and a tick of history) go through an ordinary ``Forecaster``; the functions
``step`` calls for each stage are wrapped with a timer for the profile's
duration only (nothing in the operator knows it is being timed):

- ``arrow -> columns``: ``TickColumns.from_arrow`` (dictionary encoding, numbers out of Arrow);
- ``validation``: ``validate_values``;
- ``grouping``: the stable sort by (partition, instrument) in ``group_ticks``, less validation;
- ``index``: name bytes (``name_words``) and the row lookup (``StateTable.lookup_many``);
- ``late ticks``: ``refuse_late``;
- ``features``: raw features and normalisation;
- ``gather`` / ``scatter``: h and c rows out of and back into the state table;
- ``LSTM + head``: ``RaggedLSTM.step`` (the compiled time loop, or the NumPy path's packing, GEMMs and
  gates; the dense head);
- ``rest``: what is left (previous-tick values, sorting groups by length, the scalar columns'
  scatter, forecasts back to batch order, the expiry clock).

Per stage: milliseconds per batch and share of the step, best of ``repeats`` passes
over the same batches (a fresh Forecaster each pass). The peer's full step is timed
on the same batches for scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import operators.forecaster as forecaster_mod
import operators.grouping as grouping_mod
from benchmarks.peers import BucketedKeras
from benchmarks.workload import bench_bundle, tick_batches, warm_table
from operators.features import Normalisation
from operators.forecaster import Forecaster
from operators.lstm import RaggedLSTM
from operators.state import StateTable
from operators.validation import TickColumns

STAGES = ("arrow -> columns", "validation", "grouping", "index", "late ticks", "features", "gather", "LSTM + head",
          "scatter", "rest")


@contextmanager
def _patched(owner: object, name: str, wrap: Callable) -> Iterator[None]:
    original = owner.__dict__[name]
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _timers(spent: dict[str, float]) -> ExitStack:
    """Wrap the stage functions; each adds its own time to ``spent[stage]`` (nested stages are subtracted)."""
    stack = ExitStack()
    depth: list[float] = []  # time of inner timed calls, per open timed call

    def timed(stage: str, unwrap: Callable = lambda f: f, rewrap: Callable = lambda f: f) -> Callable:
        def wrap(original):
            fn = unwrap(original)

            def inner(*args, **kwargs):
                depth.append(0.0)
                started = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    took = time.perf_counter() - started
                    inner_time = depth.pop()
                    spent[stage] += took - inner_time
                    if depth:
                        depth[-1] += took
            return rewrap(inner)
        return wrap

    as_classmethod = (lambda f: f.__func__, classmethod)
    stack.enter_context(_patched(TickColumns, "from_arrow", timed("arrow -> columns", *as_classmethod)))
    stack.enter_context(_patched(grouping_mod, "validate_values", timed("validation")))
    stack.enter_context(_patched(forecaster_mod, "group_ticks", timed("grouping")))
    stack.enter_context(_patched(forecaster_mod, "name_words", timed("index")))
    stack.enter_context(_patched(StateTable, "lookup_many", timed("index")))
    stack.enter_context(_patched(forecaster_mod, "refuse_late", timed("late ticks")))
    stack.enter_context(_patched(forecaster_mod, "raw_features", timed("features")))
    stack.enter_context(_patched(Normalisation, "apply", timed("features")))
    stack.enter_context(_patched(forecaster_mod, "take_rows", timed("gather")))
    stack.enter_context(_patched(forecaster_mod, "put_rows", timed("scatter")))
    stack.enter_context(_patched(RaggedLSTM, "step", timed("LSTM + head")))
    return stack


def profile(n_instruments: int, layers: int, activity: str = "uniform", n_batches: int = 6, repeats: int = 3,
            batch_ticks: int = 10_000, peer: bool = True) -> dict:
    """Milliseconds per batch of each stage (best pass) and the peer's full step on the same batches."""
    bundle = bench_bundle(layers)
    batches = tick_batches(n_instruments, activity, n_batches + 1, batch_ticks, seed=n_instruments + layers)
    warm = warm_table(n_instruments)
    best: dict[str, float] | None = None
    for _ in range(repeats):
        fc = Forecaster(bundle)
        fc.step(warm)
        fc.step(batches[0])
        spent = dict.fromkeys(STAGES, 0.0)
        with _timers(spent):
            started = time.perf_counter()
            for b in batches[1:]:
                fc.step(b)
            total = time.perf_counter() - started
        spent["rest"] = total - sum(spent.values())
        spent["total"] = total
        if best is None or total < best["total"]:
            best = spent
    result = {k: 1e3 * v / n_batches for k, v in best.items()}
    if peer:
        p = BucketedKeras(bundle, capacity=n_instruments)
        p.step(warm)
        p.step(batches[0])
        peer_best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for b in batches[1:]:
                p.step(b)
            peer_best = min(peer_best, time.perf_counter() - started)
        result["peer full step"] = 1e3 * peer_best / n_batches
    return result


def run(sizes: list[int] | None = None, layer_counts: list[int] | None = None,
        activities: tuple[str, ...] | None = None, quick: bool = False, batch_ticks: int = 10_000,
        printer=print) -> dict:
    sizes = sizes or ([10_000] if quick else [100_000, 1_000_000])
    layer_counts = layer_counts or [1, 2]
    activities = activities or ("uniform",)
    cases = []
    printer(f"operator profile: ms per {batch_ticks:,}-tick batch (share of the step), best of "
            f"{1 if quick else 3} passes; the peer's full step on the same batches for scale")
    for layers in layer_counts:
        for n in sizes:
            for activity in activities:
                r = profile(n, layers, activity, n_batches=2 if quick else 6, repeats=1 if quick else 3,
                            batch_ticks=batch_ticks)
                cases.append({"instruments": n, "layers": layers, "activity": activity,
                              "ms_per_batch": {k: round(v, 3) for k, v in r.items()}})
                printer(f"{n:,} instruments, {activity}, {layers} layer(s): step {r['total']:.2f} ms, "
                        f"peer full step {r['peer full step']:.2f} ms ({r['peer full step'] / r['total']:.2f}x)")
                for stage in STAGES:
                    printer(f"  {stage:<18} {r[stage]:7.2f} ms  {100 * r[stage] / r['total']:5.1f} %")
    return {"cases": cases, "batch_ticks": batch_ticks}
