"""`tickcast bench checkpoint`: checkpoint write and restore at 10k, 100k and 1M instruments.

One partition holding N instruments (hidden 64, 1 layer, state that has seen
ticks). Measured in one process, best of 3, local directory store:
- snapshot: ``Forecaster.export_partition`` (the copy taken on the loop's
  thread; the only part of a periodic checkpoint that blocks processing);
- write: Arrow IPC serialisation, SHA-256, write to a temporary name, rename,
  manifest (on the background writer thread in a run);
- load: newest manifest, read, size + checksum check, Arrow IPC parse;
- import: ``Forecaster.import_partition`` into a fresh operator;
plus the file size. ``--exactly-once`` also measures the throughput cost of
exactly-once against at-least-once through the embedded broker.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa

from operators.forecaster import Forecaster
from pipeline.checkpoint import CheckpointStore

T0 = 1_767_225_600_000_000_000


def _forecaster(bundle, n: int) -> Forecaster:
    fc = Forecaster(bundle)
    names = pa.array([f"I{i:07d}" for i in range(n)])
    rng = np.random.default_rng(0)
    for k in range(2):  # two ticks each: previous-tick values and non-zero state everywhere
        fc.step(pa.table({"instrument": names, "ts": pa.array(T0 + k * 1_000_000 + np.arange(n)),
                          "price": pa.array(100 * np.exp(rng.normal(0, 1e-3, n))),
                          "size": pa.array(np.full(n, 10.0))}))
    return fc


def _best(fn, repeats: int = 3):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run(sizes=(10_000, 100_000, 1_000_000), printer=print) -> dict:
    from benchmarks.operator import _bundle  # noqa: PLC0415

    bundle = _bundle(1, 64)
    printer("checkpoint benchmark: hidden 64, 1 layer, one partition, local directory, best of 3")
    printer(f"{'instruments':>12} {'snapshot':>10} {'write':>10} {'load':>10} {'import':>10} {'size':>10} "
            f"{'B/instr':>8}")
    rows = []
    for n in sizes:
        fc = _forecaster(bundle, n)
        root = tempfile.mkdtemp(prefix="tickcast-bench-ckpt-")
        try:
            store = CheckpointStore(root, keep=2)
            t_snap, snap = _best(lambda: fc.export_partition(0))
            t_write, manifest = _best(lambda: store.write("ticks", 0, snap, 123, bundle.model_version, {}))
            t_load, loaded = _best(lambda: store.latest("ticks", 0))
            target = Forecaster(bundle)
            t_import, _ = _best(lambda: target.import_partition(0, loaded.state))
            assert len(target.state) == n
            np.testing.assert_array_equal(target.state.h(0)[:n], fc.state.h(0)[:n])
        finally:
            shutil.rmtree(root, ignore_errors=True)
        row = {"instruments": n, "snapshot_s": t_snap, "write_s": t_write, "load_s": t_load, "import_s": t_import,
               "bytes": manifest.bytes, "bytes_per_instrument": manifest.bytes / n,
               "write_total_s": t_snap + t_write, "restore_total_s": t_load + t_import}
        rows.append(row)
        printer(f"{n:>12,} {t_snap * 1e3:>8.0f}ms {t_write * 1e3:>8.0f}ms {t_load * 1e3:>8.0f}ms "
                f"{t_import * 1e3:>8.0f}ms {manifest.bytes / 2**20:>7.1f}MiB {manifest.bytes / n:>8.0f}")
    return {"cases": rows}


def exactly_once_cost(n_ticks: int = 60_000, instruments: int = 1000, printer=print) -> dict:
    """Pipeline ticks/s, at-least-once vs exactly-once, same backlog, same broker, same run."""
    import uuid  # noqa: PLC0415

    from benchmarks.e2e import _produce  # noqa: PLC0415
    from benchmarks.operator import _bundle  # noqa: PLC0415
    from pipeline.broker import EmbeddedBroker, create_topics  # noqa: PLC0415
    from pipeline.config import RunConfig  # noqa: PLC0415
    from pipeline.metrics import Metrics  # noqa: PLC0415
    from pipeline.replay import encode_ticks  # noqa: PLC0415
    from pipeline.runner import Runner  # noqa: PLC0415
    from pipeline.synthetic import generate_ticks  # noqa: PLC0415

    import threading  # noqa: PLC0415

    bundle = _bundle(1, 32)
    out = {}
    with EmbeddedBroker() as broker:
        u = uuid.uuid4().hex[:6]
        tin, tout, dlq = f"eo-in-{u}", f"eo-out-{u}", f"eo-dlq-{u}"
        create_topics(broker.bootstrap, {tin: 1, tout: 1, dlq: 1})
        _produce(broker.bootstrap, tin, encode_ticks(generate_ticks(instruments, n_ticks, seed=1, bad_fraction=0.0)))
        for mode in ("at_least_once", "exactly_once", "at_least_once", "exactly_once"):
            root = tempfile.mkdtemp(prefix="tickcast-bench-eo-")
            cfg = RunConfig.load(env={}, flags=dict(
                model="bench", bootstrap_servers=broker.bootstrap, input_topics=tin, output_topic=tout,
                dead_letter_topic=dlq, group_id=f"eo-{uuid.uuid4().hex[:8]}", status_interval_s=0,
                max_batch_ticks=5000, max_batch_ms=20, processing=mode, checkpoint_uri=root,
                transactional_id=f"eo-{uuid.uuid4().hex[:8]}"))
            runner = Runner(cfg, bundle, Metrics())

            def watch(r=runner):
                while r.stats.ticks < n_ticks and not r.stop_event.is_set():
                    time.sleep(0.1)
                r.request_stop()

            threading.Thread(target=watch, daemon=True).start()
            runner.run()
            shutil.rmtree(root, ignore_errors=True)
            s = runner.stats
            rate = s.ticks / (s.last_batch_done - s.first_batch_at)
            out.setdefault(mode, []).append(rate)
    best = {m: max(v) for m, v in out.items()}
    ratio = best["exactly_once"] / best["at_least_once"]
    printer(f"pipeline every_tick, {n_ticks:,} ticks, best of 2: at-least-once {best['at_least_once']:,.0f} ticks/s, "
            f"exactly-once {best['exactly_once']:,.0f} ticks/s (ratio {ratio:.2f})")
    return {"ticks": n_ticks, "ticks_per_second": best, "exactly_once_over_at_least_once": ratio}
