"""Time from SIGKILL to the next forecast after a restart, at 100k instruments, broken down.

    python -m benchmarks.recovery [--instruments N] [--replay-ticks R] [--session-timeout-ms MS] [--json PATH]

A `tickcast run` process (exactly-once, checkpoints in a local directory, written on revoke and shutdown)
forecasts one tick for each of N instruments and stops gracefully: a checkpoint of N rows at the end
offset. A second process restores it, forecasts R more ticks (which no checkpoint holds) and is killed with
SIGKILL; a third is started at once and one new tick is produced; the clock stops when that tick's forecast
is readable (read_committed). The third process restores the checkpoint and replays the R ticks silently.

The breakdown comes from the third process's own log timestamps and its restore-duration metric: the
process up to its ``starting`` line (interpreter, imports, bundle, metrics endpoint), its ``connected``
line (consumer subscribed), the group's answer (the broker holds the join until it has dropped the killed
member: the group's session timeout), the restore (committed offsets, checkpoint load and import), the
silent replay and the first forecast. A fresh interpreter then times the serving imports and the bundle
load on their own, and a bare ``import tensorflow`` (which serving does not do) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime

from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka.broker import EmbeddedBroker, create_topics
from tests.support.live import ENV, RunProcess, produce


def _ts(line: dict) -> float:
    return datetime.fromisoformat(line["ts"].replace("Z", "+00:00")).timestamp()


def _messages(names, k: int):
    return [(n.encode(), json.dumps({"v": 1, "instrument": n, "ts": 1_767_225_600_000_000_000 + k * 10**9 + i,
                                     "price": 100.0 + (i % 7) * 0.01, "size": 1}).encode())
            for i, n in enumerate(names)]


def _wait_forecasts(bootstrap: str, topic: str, want: int, timeout: float) -> float:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"rec-{uuid.uuid4().hex[:6]}",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got, deadline = 0, time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        msgs = c.consume(10_000, 0.05)
        got += sum(1 for m in msgs if not m.error())
    c.close()
    if got < want:
        raise RuntimeError(f"only {got} of {want} forecasts within {timeout}s")
    return time.time()


# What `tickcast run` imports before it loads the bundle (pipeline/run_command.py), then the bundle load, each timed.
_STARTUP_PROBE = """
import sys, time
t0 = time.perf_counter()
import pipeline.cli, pipeline.run_command, pipeline.logs, pipeline.live.runner, pipeline.metrics
from operators.bundle import load_bundle
t1 = time.perf_counter()
load_bundle(sys.argv[1])
t2 = time.perf_counter()
assert not {"tensorflow", "keras"} & set(sys.modules)
print(t1 - t0, t2 - t1)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instruments", type=int, default=100_000)
    ap.add_argument("--replay-ticks", type=int, default=0,
                    help="ticks forecast after the checkpoint and before the kill: replayed on restart (default 0)")
    ap.add_argument("--session-timeout-ms", type=int, default=6000,
                    help="the group's session timeout (default 6000, Apache Kafka's smallest by default)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = os.environ.get("TICKCAST_BENCH_MODEL") or _model()
    store = tempfile.mkdtemp(prefix="tickcast-rec-")
    try:
        result = _measure(args, model, store)
    finally:
        shutil.rmtree(store, ignore_errors=True)  # n instruments of checkpoints: 53 MiB at 100k
        if not os.environ.get("TICKCAST_BENCH_MODEL"):
            shutil.rmtree(model, ignore_errors=True)
    for k, v in result.items():
        print(f"  {k:<40} {v:,.2f}" if isinstance(v, float) else f"  {k:<40} {v:,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


def _measure(args: argparse.Namespace, model: str, store: str) -> dict:
    n, replay = args.instruments, args.replay_ticks
    names = [f"I{i:06d}" for i in range(n)]
    with EmbeddedBroker() as broker:
        tin, tout, dlq = "rec-in", "rec-out", "rec-dlq"
        create_topics(broker.bootstrap, {tin: 1, tout: 1, dlq: 1})
        run_args = ["--processing", "exactly_once", "--checkpoint-uri", store, "--transactional-id", "rec-1",
                    "--checkpoint-interval-s", "0", "--session-timeout-ms", str(args.session_timeout_ms),
                    "--max-batch-ticks", "20000"]
        first = RunProcess.start(broker.bootstrap, model, tin, tout, dlq, "rec", *run_args)
        produce(broker.bootstrap, tin, _messages(names, 0), partition=0)
        _wait_forecasts(broker.bootstrap, tout, n, timeout=300)
        first.stop()  # graceful: a checkpoint of all n instruments at the end offset
        second = RunProcess.start(broker.bootstrap, model, tin, tout, dlq, "rec", *run_args)
        second.wait_for("partition restored from checkpoint", timeout=120)
        if replay:
            produce(broker.bootstrap, tin, _messages([names[i % n] for i in range(replay)], 1), partition=0)
            _wait_forecasts(broker.bootstrap, tout, n + replay, timeout=300)
        time.sleep(2)  # a few heartbeats: the kill lands mid-session, as a crash does
        killed_at = time.time()
        second.kill()
        third = RunProcess.start(broker.bootstrap, model, tin, tout, dlq, "rec", *run_args)
        produce(broker.bootstrap, tin, _messages(names[:1], 2), partition=0)
        done_at = _wait_forecasts(broker.bootstrap, tout, n + replay + 1, timeout=300)
        started = _ts(third.wait_for("starting"))
        connected = _ts(third.wait_for("connected"))
        restored_line = third.wait_for("partition restored from checkpoint")
        restored = _ts(restored_line)
        restore_s = third.metric("tickcast_restore_duration_seconds_sum")
        third.stop()
    probe = subprocess.run([sys.executable, "-c", _STARTUP_PROBE, model], check=True, capture_output=True,
                           text=True, env=ENV)
    imports_s, bundle_s = (float(v) for v in probe.stdout.split())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, env=ENV)
    interpreter_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True, env=ENV)
    tf_import = time.perf_counter() - t0
    assigned = restored - restore_s
    return {
        "instruments": n, "checkpoint_rows": restored_line["rows"], "replayed_ticks": restored_line["replay"],
        "session_timeout_ms": args.session_timeout_ms,
        "kill_to_forecast_s": done_at - killed_at,
        "kill_to_starting_log_s": started - killed_at,
        "starting_to_connected_s": connected - started,
        "connected_to_assigned_s": assigned - connected,
        "restore_s": restore_s,
        "restored_to_forecast_s": done_at - restored,
        "kill_to_assigned_s": assigned - killed_at,
        "after_assignment_s": done_at - assigned,
        "fresh_interpreter_s": interpreter_s,
        "fresh_serving_imports_s": imports_s,
        "fresh_bundle_load_s": bundle_s,
        "tensorflow_import_s": tf_import,
    }


def _model() -> str:
    from operators.bundle import save_bundle  # noqa: PLC0415
    from operators.training import TrainConfig, train  # noqa: PLC0415
    from pipeline.files.synthetic import generate_ticks  # noqa: PLC0415

    path = tempfile.mkdtemp(prefix="tickcast-rec-model-")
    save_bundle(train(generate_ticks(20, 20_000, seed=1), TrainConfig(epochs=1, hidden=64)), path)
    return path


if __name__ == "__main__":
    main()
