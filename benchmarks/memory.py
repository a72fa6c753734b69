"""`tickcast bench memory`: resident memory while millions of distinct instrument names stream past.

Every micro-batch brings ``new_per_batch`` instruments never seen before; each
ticks in three consecutive batches and is then never seen again (a producer
keying by order id looks like this). Event time advances one second per batch.
The ticks go through the live consumer's own per-batch code, without Kafka:
``Runner.forecaster.step`` (state table), ``pipeline.live.status.score`` (online scorer,
expiry hookup), ``Runner.json_names`` (the forecast encoder's name cache) and ``Runner.forget_expired``
(the name memos' expiry hookup).

Two runs over the same stream:
1. ``expire``: ``expire_after`` on, no instrument limit: rows are reclaimed as
   fast as they arrive and every side table shrinks with them.
2. ``limit``: no expiry, ``max_instruments`` set: the table fills to the cap,
   then new instruments are dead-lettered (``instrument_limit``).
Optionally (``baseline``) neither, over fewer names: memory grows with every name.

RSS is read from /proc/self/statm every ``report_every`` ticks and printed.
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque

import numpy as np
import pyarrow as pa

from benchmarks.workload import bench_bundle
from operators.validation import RejectReason
from pipeline.config import RunConfig
from pipeline.live.runner import Runner
from pipeline.live.status import score
from pipeline.metrics import Metrics

T0 = 1_767_225_600_000_000_000
SEC = 1_000_000_000
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _names(batch: int, n: int, length: int) -> list[str]:
    stem = f"ORDER-{batch:08d}-"
    return [f"{stem}{i:06d}".ljust(length, "x") for i in range(n)]


def run_one(mode: str, names_total: int, new_per_batch: int, name_length: int, expire_batches: int,
            max_instruments: int, partitions: int, report_every: int) -> dict:
    bundle = bench_bundle(1, 64)
    cfg = RunConfig(model="unused", checkpoint_uri="",
                    expire_after=f"{expire_batches}s" if mode == "expire" else "",
                    max_instruments=max_instruments if mode == "limit" else 0)
    runner = Runner(cfg, bundle, Metrics())
    fc, scorer, names_cache = runner.forecaster, runner.scorer, runner.json_names
    n_batches = -(-names_total // new_per_batch)
    live: deque[list[str]] = deque(maxlen=3)
    rng = np.random.default_rng(0)
    gc.collect()
    rss0 = rss_bytes()
    samples: list[dict] = []
    ticks_done = refused = 0
    next_report = report_every
    t_start = time.perf_counter()
    print(f"[{mode}] {names_total:,} names, {new_per_batch:,} new per batch, 3 ticks each, names {name_length} "
          f"chars, {partitions} partitions; "
          + (f"expire_after {expire_batches}s (1 s of event time per batch)" if mode == "expire" else
             f"max_instruments {max_instruments:,}, no expiry" if mode == "limit" else "no expiry, no limit"))
    print(f"{'ticks':>12} {'names':>12} {'rows':>9} {'capacity':>9} {'scorer':>9} {'sc.cap':>9} "
          f"{'namecache':>9} {'refused':>11} {'RSS MB':>8}")
    for b in range(n_batches):
        live.append(_names(b, min(new_per_batch, names_total - b * new_per_batch), name_length))
        names = [nm for group in live for nm in group]
        n = len(names)
        price = 100.0 * np.exp(rng.normal(0, 1e-3, n))
        part = (np.arange(n) % partitions).astype(np.int32)
        ticks = pa.table({
            "instrument": pa.array(names, pa.string()),
            "ts": pa.array(np.full(n, T0 + b * SEC, dtype=np.int64)),
            "price": pa.array(price),
            "size": pa.array(np.ones(n)),
            "partition": pa.array(part),
        })
        res = fc.step(ticks)
        score(runner.scorer, runner.metrics, ticks, res.rows, res.forecasts, res.expired)
        if len(res.rows):
            names_cache.lookup(ticks.column("instrument").take(pa.array(res.rows)).to_pylist())
        runner.forget_expired(res.expired)
        refused += int(np.count_nonzero(res.reasons == RejectReason.INSTRUMENT_LIMIT))
        ticks_done += n
        seen = min((b + 1) * new_per_batch, names_total)
        if ticks_done >= next_report or b == n_batches - 1:
            next_report += report_every
            s = {"ticks": ticks_done, "names": seen, "rows": len(fc.state), "capacity": fc.state.capacity,
                 "scorer_rows": len(scorer), "scorer_capacity": scorer.capacity, "name_cache": len(names_cache),
                 "refused_ticks": refused, "rss_bytes": rss_bytes()}
            samples.append(s)
            print(f"{s['ticks']:>12,} {s['names']:>12,} {s['rows']:>9,} {s['capacity']:>9,} {s['scorer_rows']:>9,} "
                  f"{s['scorer_capacity']:>9,} {s['name_cache']:>9,} {refused:>11,} {s['rss_bytes'] / 2**20:>8.0f}",
                  flush=True)
    elapsed = time.perf_counter() - t_start
    drained = None
    if mode == "expire":
        # The flood stops: one tick per partition, well past expiry, lets the sweeps reclaim everything.
        late = T0 + (n_batches + 4 * expire_batches) * SEC
        ticks = pa.table({"instrument": pa.array([f"AFTER-{p}" for p in range(partitions)]),
                          "ts": pa.array(np.full(partitions, late, dtype=np.int64)),
                          "price": pa.array(np.full(partitions, 100.0)), "size": pa.array(np.ones(partitions)),
                          "partition": pa.array(np.arange(partitions, dtype=np.int32))})
        res = fc.step(ticks)
        score(runner.scorer, runner.metrics, ticks, res.rows, res.forecasts, res.expired)
        gc.collect()
        drained = {"rows": len(fc.state), "capacity": fc.state.capacity, "scorer_rows": len(scorer),
                   "scorer_capacity": scorer.capacity, "rss_bytes": rss_bytes()}
        print(f"[{mode}] after the flood stops: state rows {drained['rows']:,}, capacity {drained['capacity']:,}, "
              f"scorer rows {drained['scorer_rows']:,}, scorer capacity {drained['scorer_capacity']:,}, "
              f"RSS {drained['rss_bytes'] / 2**20:.0f} MB")

    def at(frac: float) -> dict:
        want = frac * names_total
        return next(s for s in samples if s["names"] >= want)

    summary = {
        "mode": mode, "names": names_total, "ticks": ticks_done, "seconds": round(elapsed, 1),
        "rss_start_mb": round(rss0 / 2**20), "rss_10pct_mb": round(at(0.1)["rss_bytes"] / 2**20),
        "rss_50pct_mb": round(at(0.5)["rss_bytes"] / 2**20), "rss_end_mb": round(samples[-1]["rss_bytes"] / 2**20),
        "rss_max_mb": round(max(s["rss_bytes"] for s in samples) / 2**20),
        "rows_end": len(fc.state), "capacity_end": fc.state.capacity,
        "rows_max": max(s["rows"] for s in samples), "capacity_max": max(s["capacity"] for s in samples),
        "scorer_rows_end": len(scorer), "expired_rows": fc.expired_total, "refused_ticks": refused,
        "drained": drained, "samples": samples,
    }
    print(f"[{mode}] RSS MB at 10 % / 50 % / 100 % of the names: {summary['rss_10pct_mb']} / "
          f"{summary['rss_50pct_mb']} / {summary['rss_end_mb']} (max {summary['rss_max_mb']}, start "
          f"{summary['rss_start_mb']}); state rows {summary['rows_end']:,} (max {summary['rows_max']:,}), capacity "
          f"{summary['capacity_end']:,} (max {summary['capacity_max']:,}); expired {fc.expired_total:,}; refused "
          f"ticks {refused:,}; {elapsed:.0f} s, {ticks_done / elapsed:,.0f} ticks/s")
    return summary


def run(names_total: int = 10_000_000, new_per_batch: int = 10_000, name_length: int = 40, expire_batches: int = 10,
        max_instruments: int = 250_000, partitions: int = 4, modes: tuple[str, ...] = ("expire", "limit"),
        baseline_names: int = 1_000_000) -> dict:
    report_every = max(3 * names_total // 20, 3 * new_per_batch)
    out = {}
    for mode in modes:
        total = min(baseline_names, names_total) if mode == "baseline" else names_total
        out[mode] = run_one(mode, total, new_per_batch, name_length, expire_batches, max_instruments, partitions,
                            max(3 * total // 20, 3 * new_per_batch) if mode == "baseline" else report_every)
        gc.collect()
    return out
