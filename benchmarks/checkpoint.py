"""`tickcast bench checkpoint`: checkpoint write and restore at 10k, 100k and 1M instruments.

One partition holding N instruments (hidden 64, 1 layer, state that has seen
ticks). Measured in one process, best of 3, local directory store:
- snapshot: ``Forecaster.export_partition`` (the copy taken on the loop's
  thread; the only part of a periodic checkpoint that blocks processing);
- write: Arrow IPC serialisation, SHA-256, write to a temporary name, rename,
  manifest (on the background writer thread in a run);
- load: newest manifest, read, size + checksum check, Arrow IPC parse;
- import: ``Forecaster.import_partition`` into a fresh operator;
plus the file size. Each size runs twice in the same process: on a local
directory and on S3 through a local S3 endpoint (moto's server, a child
process on a free port, spoken to over HTTP by pyarrow's S3 client, URI with
``endpoint_override`` in the query as a MinIO user would give it); the S3 rows
are skipped with a note when ``moto[server]`` is not installed. The exactly-once
figure measures the throughput cost of exactly-once against at-least-once
through the embedded broker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import numpy as np
import pyarrow as pa

from operators.forecaster import Forecaster
from pipeline.checkpoint import CheckpointStore, join_uri

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


@contextlib.contextmanager
def _s3_endpoint():
    """``s3://KEY:SECRET@bucket/bench?endpoint_override=...`` on a moto server child process, or None."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        yield None
        return
    import pyarrow.fs as pafs  # noqa: PLC0415

    from pipeline.kafka.broker import free_port  # noqa: PLC0415

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                          access_key="bench", secret_key="bench", allow_bucket_creation=True).create_dir(bucket)
        yield (f"s3://bench:bench@{bucket}/bench?endpoint_override=127.0.0.1:{port}&scheme=http"
               f"&region=us-east-1")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _case(bundle, fc, n: int, store: CheckpointStore, where: str, printer) -> dict:
    t_snap, snap = _best(lambda: fc.export_partition(0))
    t_write, manifest = _best(lambda: store.write("ticks", 0, snap, 123, bundle.model_version, {}))
    t_load, loaded = _best(lambda: store.latest("ticks", 0))
    target = Forecaster(bundle)
    t_import, _ = _best(lambda: target.import_partition(0, loaded.state))
    assert len(target.state) == n
    np.testing.assert_array_equal(target.state.h(0)[:n], fc.state.h(0)[:n])
    row = {"store": where, "instruments": n, "snapshot_s": t_snap, "write_s": t_write, "load_s": t_load,
           "import_s": t_import, "bytes": manifest.bytes, "bytes_per_instrument": manifest.bytes / n,
           "write_total_s": t_snap + t_write, "restore_total_s": t_load + t_import}
    printer(f"{where:<6} {n:>12,} {t_snap * 1e3:>8.0f}ms {t_write * 1e3:>8.0f}ms {t_load * 1e3:>8.0f}ms "
            f"{t_import * 1e3:>8.0f}ms {manifest.bytes / 2**20:>7.1f}MiB {manifest.bytes / n:>8.0f}")
    return row


def run(sizes=(10_000, 100_000, 1_000_000), printer=print) -> dict:
    from benchmarks.workload import bench_bundle  # noqa: PLC0415

    bundle = bench_bundle(1, 64)
    rows = []
    with _s3_endpoint() as s3_uri:
        printer("checkpoint benchmark: hidden 64, 1 layer, one partition, best of 3; local directory (fsync) and "
                + ("S3 through a local endpoint (moto server, HTTP)" if s3_uri else
                   "no S3 row (moto[server] not installed)"))
        printer(f"{'store':<6} {'instruments':>12} {'snapshot':>10} {'write':>10} {'load':>10} {'import':>10} "
                f"{'size':>10} {'B/instr':>8}")
        for n in sizes:
            fc = _forecaster(bundle, n)
            root = tempfile.mkdtemp(prefix="tickcast-bench-ckpt-")
            try:
                rows.append(_case(bundle, fc, n, CheckpointStore(root, keep=2), "local", printer))
            finally:
                shutil.rmtree(root, ignore_errors=True)
            if s3_uri:
                rows.append(_case(bundle, fc, n, CheckpointStore(join_uri(s3_uri, f"n{n}"), keep=2),
                                  "s3", printer))
            del fc
    return {"cases": rows}


def exactly_once_cost(n_ticks: int = 60_000, instruments: int = 1000, printer=print) -> dict:
    """Pipeline ticks/s, at-least-once vs exactly-once, same backlog, same broker, same run."""
    import threading  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from benchmarks.e2e import produce_ticks  # noqa: PLC0415
    from benchmarks.workload import bench_bundle  # noqa: PLC0415
    from pipeline.config import RunConfig  # noqa: PLC0415
    from pipeline.files.synthetic import generate_ticks  # noqa: PLC0415
    from pipeline.kafka.broker import EmbeddedBroker, create_topics  # noqa: PLC0415
    from pipeline.kafka.replay import encode_ticks  # noqa: PLC0415
    from pipeline.live.runner import Runner  # noqa: PLC0415
    from pipeline.metrics import Metrics  # noqa: PLC0415

    bundle = bench_bundle(1, 32)
    out = {}
    with EmbeddedBroker() as broker:
        u = uuid.uuid4().hex[:6]
        tin, tout, dlq = f"eo-in-{u}", f"eo-out-{u}", f"eo-dlq-{u}"
        create_topics(broker.bootstrap, {tin: 1, tout: 1, dlq: 1})
        produce_ticks(broker.bootstrap, tin, encode_ticks(generate_ticks(instruments, n_ticks, seed=1, bad_fraction=0.0)))
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
