"""The serving process alone under steady load with instrument churn, RSS every second:
``python -m benchmarks.soak_churn [MINUTES] [--json FILE] [--tracemalloc M1,M2] [--rate TICKS_PER_S]``
(default 60 minutes, 3,000 ticks/s).

``tickcast run`` as a child process (exactly-once, a checkpoint every 30 s, ``expire_after = "2m"``) is fed
``RATE`` ticks a second by a load generator in another process: ``LIVE`` instruments are live at any moment
and ``NEW_PER_SECOND`` names never seen before join every second (the oldest live name falls silent for
good), so each name ticks for ``LIVE / NEW_PER_SECOND`` seconds and expires two minutes later. Event time is
the wall clock. The child's RSS (``/proc/PID/statm``) is sampled every second; the result is the RSS slope
(least squares) after the warm-up (``WARMUP_MINUTES``, or the first third of a shorter run): the state table,
the scorer and every name-keyed side table have reached their steady size by then.

``--tracemalloc M1,M2``: the child traces its Python allocations and dumps a snapshot at minutes M1 and M2;
the 25 lines whose allocations grew most between them are printed (tracing slows the child; for finding what
grows, not for the figures).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from pipeline.kafka.broker import EmbeddedBroker, create_topics

RATE = 3000  # ticks/s
LIVE = 2000  # instruments ticking at any moment
NEW_PER_SECOND = 20  # new names a second (each one lives LIVE / NEW_PER_SECOND = 100 s)
PARTITIONS = 2
WARMUP_MINUTES = 5.0  # expiry (2 min) after a name's 100 s of life: the state's size is steady after ~4 min
LINGER_MS = 100  # the load generator's record batches (the embedded broker's fetch cost grows with their number)
PACING_S = 0.01
STALL_S = 120.0  # no tick consumed for this long: the soak ends, its figures up to the last progress
_PAGE = os.sysconf("SC_PAGE_SIZE")


def churn_name(i: int) -> str:
    return f"CHURN-{i:09d}"


def _load(bootstrap: str, topic: str, seconds: float, rate: int = RATE, seed: int = 7) -> None:
    """The load generator: at time t, ticks for names ``floor(t * NEW_PER_SECOND) + [0, LIVE)`` picked at
    random, ``rate`` a second, event time (and CreateTime) the wall clock, increasing."""
    from confluent_kafka import Producer  # noqa: PLC0415

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rng = np.random.default_rng(seed)
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": LINGER_MS, "acks": 1})
    started = time.monotonic()
    sent = 0
    last_ts = 0
    total = int(rate * seconds)
    while sent < total:
        now = time.monotonic() - started
        due = min(total, int(now * rate) + 1) - sent
        if due > 0:
            first = int(now * NEW_PER_SECOND)
            ids = first + rng.integers(0, LIVE, due)
            prices = 100.0 * np.exp(rng.normal(0.0, 1e-3, due))
            for i, price in zip(ids.tolist(), prices.tolist()):
                last_ts = max(last_ts + 1, time.time_ns())
                name = churn_name(i)
                value = f'{{"v":1,"instrument":"{name}","ts":{last_ts},"price":{price!r},"size":1.0}}'.encode()
                while True:
                    try:
                        p.produce(topic, key=name.encode(), value=value, timestamp=last_ts // 1_000_000)
                        break
                    except BufferError:
                        p.poll(0.01)
            sent += due
        p.poll(0)
        time.sleep(PACING_S)
    p.flush(60)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _metric(url: str, name: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return float("nan")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line.split("{", 1)[0].split(" ", 1)[0] == name)


def slope_after(samples: list[tuple[float, int]], warmup_s: float) -> float:
    """MiB per minute, least squares over the samples taken after ``warmup_s``."""
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples]) / 2**20
    keep = t >= warmup_s
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(t[keep], rss[keep], 1)[0] * 60)


def _bundle(workdir: Path) -> Path:
    from benchmarks.startup import saved_bundle  # noqa: PLC0415

    return saved_bundle(workdir, 1, 32)


def _child_args(bundle: Path, bootstrap: str, topics: tuple[str, str, str], store: Path, traced: str) -> list[str]:
    tin, tout, dlq = topics
    u = uuid.uuid4().hex[:6]
    run = ["run", "--model", str(bundle), "--bootstrap-servers", bootstrap, "--input-topics", tin,
           "--output-topic", tout, "--dead-letter-topic", dlq, "--group-id", f"soak-churn-{u}",
           "--processing", "exactly_once", "--transactional-id", f"soak-churn-{u}",
           "--checkpoint-uri", str(store), "--checkpoint-interval-s", "30", "--expire-after", "2m",
           "--metrics-address", "127.0.0.1:0", "--status-interval-s", "0", "--log-format", "json"]
    if traced:
        return [sys.executable, "-m", "benchmarks.soak_churn", "--serve-traced", traced, "--", *run]
    return [sys.executable, "-m", "pipeline.cli", *run]


def run(minutes: float = 60.0, tracemalloc_at: tuple[float, float] | None = None, rate: int = RATE,
        printer=print) -> dict:
    work = Path(tempfile.mkdtemp(prefix="tickcast-soak-churn-"))
    snapdir = work / "snapshots"
    traced = f"{snapdir}:{tracemalloc_at[0]},{tracemalloc_at[1]}" if tracemalloc_at else ""
    warmup_s = min(WARMUP_MINUTES * 60, minutes * 20)
    try:
        bundle = _bundle(work)
        with EmbeddedBroker() as broker:
            u = uuid.uuid4().hex[:6]
            topics = (f"churn-in-{u}", f"churn-out-{u}", f"churn-dlq-{u}")
            create_topics(broker.bootstrap, {topics[0]: PARTITIONS, topics[1]: 1, topics[2]: 1})
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
            child = subprocess.Popen(_child_args(bundle, broker.bootstrap, topics, work / "ckpt", traced),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            lines: list[dict] = []
            threading.Thread(target=_collect, args=(child, lines), daemon=True).start()
            url = _wait_started(child, lines)
            printer(f"soak-churn: {minutes:g} minutes, tickcast run (exactly_once, checkpoints every 30 s, "
                    f"expire_after 2m), {rate:,} ticks/s, {LIVE:,} live instruments, {NEW_PER_SECOND} new names a "
                    f"second, {PARTITIONS} partitions; RSS of the serving process every second"
                    + (f"; tracemalloc snapshots at minutes {tracemalloc_at}" if traced else ""))
            printer(f"{'minute':>6} {'RSS MiB':>8} {'state rows':>10} {'ticks':>11} {'expired':>9}")
            feeder = multiprocessing.get_context("spawn").Process(
                target=_load, args=(broker.bootstrap, topics[0], minutes * 60, rate))
            started = time.monotonic()
            feeder.start()
            samples: list[tuple[float, int]] = []
            rows: list[dict] = []
            next_minute = 60.0
            progress_at, stalled = 0.0, False
            try:
                while feeder.is_alive() and child.poll() is None:
                    samples.append((time.monotonic() - started, rss_of(child.pid)))
                    if samples[-1][0] >= next_minute:
                        next_minute += 60.0
                        rows.append(_minute_row(url, samples))
                        r = rows[-1]
                        printer(f"{r['minute']:>6.0f} {r['rss_mib']:>8.1f} {r['state_rows']:>10,.0f} "
                                f"{r['ticks']:>11,.0f} {r['expired']:>9,.0f}", flush=True)
                        if len(rows) < 2 or r["ticks"] > rows[-2]["ticks"]:
                            progress_at = samples[-1][0]
                        elif samples[-1][0] - progress_at >= STALL_S:
                            stalled = True  # no tick consumed for STALL_S: the figures end where progress did
                            printer(f"  no progress since minute {progress_at / 60:.0f} (lag growing: the embedded "
                                    "broker's fetches, see docs/benchmarks.md); ending the soak there")
                            samples = [x for x in samples if x[0] <= progress_at]
                            break
                    feeder.join(1.0)
                deadline = time.monotonic() + (0 if stalled else 120)
                expected = int(rate * minutes * 60)
                while _metric(url, "tickcast_ticks_received_total") < expected and time.monotonic() < deadline:
                    time.sleep(1.0)
                ticks = _metric(url, "tickcast_ticks_received_total")
                forecasts = _metric(url, "tickcast_forecasts_published_total")
                failed_ckpt = _metric(url, "tickcast_checkpoint_writes_total") - _ok_checkpoints(url)
            finally:
                feeder.terminate() if feeder.is_alive() else None
                child.send_signal(signal.SIGTERM)
                code = child.wait(timeout=120)
        result = {"minutes": minutes, "rate_ticks_per_second": rate, "live_instruments": LIVE,
                  "new_names_per_second": NEW_PER_SECOND, "partitions": PARTITIONS, "expire_after": "2m",
                  "checkpoint_interval_s": 30, "processing": "exactly_once", "ticks_produced": expected,
                  "ticks_received": ticks, "forecasts_published": forecasts, "failed_checkpoints": failed_ckpt,
                  "exit_code": code, "warmup_minutes": warmup_s / 60, "stalled": stalled,
                  "minutes_measured": samples[-1][0] / 60,
                  **summary(samples, warmup_s), "per_minute": rows,
                  "rss_mib_every_10s": [round(r / 2**20, 1) for _, r in samples[::10]]}
        printer(f"  {ticks:,.0f} of {expected:,} ticks received, {forecasts:,.0f} forecasts; RSS after the "
                f"{warmup_s / 60:g}-minute warm-up: {result['rss_mib_after_warmup_min']:.1f}-"
                f"{result['rss_mib_after_warmup_max']:.1f} MiB, slope {result['rss_slope_mib_per_minute']:+.3f} "
                f"MiB/min (last half {result['rss_slope_mib_per_minute_last_half']:+.3f}); exit code {code}")
        if traced:
            _print_growth(snapdir, printer)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(samples: list[tuple[float, int]], warmup_s: float) -> dict:
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples]) / 2**20
    after = rss[t >= warmup_s]
    end = t[-1] if len(t) else 0.0
    return {"rss_mib_start": float(rss[0]), "rss_mib_max": float(rss.max()),
            "rss_mib_after_warmup_min": float(after.min()) if len(after) else float("nan"),
            "rss_mib_after_warmup_max": float(after.max()) if len(after) else float("nan"),
            "rss_mib_end": float(rss[-1]), "rss_slope_mib_per_minute": slope_after(samples, warmup_s),
            "rss_slope_mib_per_minute_last_half": slope_after(samples, max(warmup_s, end / 2))}


def _minute_row(url: str, samples) -> dict:
    return {"minute": round(samples[-1][0] / 60), "rss_mib": samples[-1][1] / 2**20,
            "state_rows": _metric(url, "tickcast_state_rows"), "ticks": _metric(url, "tickcast_ticks_received_total"),
            "expired": _metric(url, "tickcast_state_expired_rows_total")}


def _ok_checkpoints(url: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return sum(float(line.rsplit(" ", 1)[1]) for line in resp.read().decode().splitlines()
                   if line.startswith('tickcast_checkpoint_writes_total{result="ok"}'))


def _collect(child: subprocess.Popen, lines: list[dict]) -> None:
    for line in child.stderr:
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            lines.append({"raw": line})


def _wait_started(child: subprocess.Popen, lines: list[dict], timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        for line in list(lines):
            if line.get("event") == "starting":
                return line["metrics"]
        time.sleep(0.1)
    raise RuntimeError(f"tickcast run did not start: {lines[-5:]}")


def _print_growth(snapdir: Path, printer) -> None:
    import tracemalloc  # noqa: PLC0415

    snaps = sorted(snapdir.glob("snap-*.pickle"))
    if len(snaps) < 2:
        printer(f"  tracemalloc: {len(snaps)} snapshot(s) taken, need two")
        return
    a, b = (tracemalloc.Snapshot.load(str(s)) for s in snaps[:2])
    printer(f"  tracemalloc: the 25 lines whose allocations grew most between {snaps[0].stem} and {snaps[1].stem}")
    for stat in b.compare_to(a, "lineno")[:25]:
        printer(f"    {stat}")


def _serve_traced(spec: str, run_args: list[str]) -> int:
    """The child of ``--tracemalloc``: ``tickcast run`` with its Python allocations traced, a snapshot dumped
    at each of the given minutes."""
    import tracemalloc  # noqa: PLC0415

    from pipeline.cli import main as cli_main  # noqa: PLC0415

    folder, at = spec.rsplit(":", 1)
    Path(folder).mkdir(parents=True, exist_ok=True)
    tracemalloc.start(8)

    def dump() -> None:
        started = time.monotonic()
        for i, minute in enumerate(float(m) for m in at.split(",")):
            time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
            tracemalloc.take_snapshot().dump(f"{folder}/snap-{i}-{minute:g}min.pickle")

    threading.Thread(target=dump, daemon=True).start()
    return cli_main(run_args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--serve-traced"]:
        return _serve_traced(args[1], args[3:])
    from pipeline import logs  # noqa: PLC0415

    logs.configure("text", "warning")
    out = args[args.index("--json") + 1] if "--json" in args else None
    at = args[args.index("--tracemalloc") + 1] if "--tracemalloc" in args else None
    rate = args[args.index("--rate") + 1] if "--rate" in args else None
    rest = [a for a in args if a not in ("--json", out, "--tracemalloc", at, "--rate", rate)]
    minutes = float(rest[0]) if rest else 60.0
    snap = tuple(float(m) for m in at.split(",")) if at else None
    result = run(minutes, snap, int(rate) if rate else RATE)
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
