"""Shutdown within its deadline, whatever the broker or the store does: `tickcast run` gets SIGTERM while the
broker (every connection through a proxy that stops forwarding) or the checkpoint store (S3 behind such a
proxy) has stalled, and the process is gone within `shutdown_timeout_s` plus a small margin; the checkpoint
written before the stall is still the valid latest one.

The margin covers the process's own exit (interpreter teardown), not any step of the shutdown: every step
has its deadline inside `shutdown_timeout_s` (pipeline/live/stopping.py)."""

from __future__ import annotations

import signal
import time
import uuid
from urllib.parse import urlencode

from pipeline.checkpoint import CheckpointStore
from pipeline.checkpoint_format import path_segment
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import create_topics
from tests.support.faults import wait_drained
from tests.support.live import RunProcess, produce, tick_messages
from tests.support.proxy import TcpProxy, broker_behind_proxy
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, s3_server  # noqa: F401 - the session's S3 (fixture)

SHUTDOWN_S = 6.0
MARGIN_S = 4.0


def sigterm_and_time(run: RunProcess) -> tuple[float, int]:
    started = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    try:
        code = run.proc.wait(timeout=120)
    finally:
        run.kill()
    elapsed = time.monotonic() - started
    print(f"SIGTERM to exit: {elapsed:.1f} s (shutdown_timeout_s {SHUTDOWN_S})")
    return elapsed, code


def test_sigterm_with_the_broker_stalled_ends_within_the_shutdown_timeout(bundle, tmp_path, kafka_client):
    with broker_behind_proxy() as proxy:
        bootstrap = proxy.address
        u = uuid.uuid4().hex[:8]
        tin, tout, dlq = f"sd-in-{u}", f"sd-out-{u}", f"sd-dlq-{u}"
        create_topics(bootstrap, {tin: 2, tout: 1, dlq: 1})
        # A long request timeout: the consumer's LeaveGroup would wait that long on a stalled broker.
        run = RunProcess.start(bootstrap, str(bundle.path), tin, tout, dlq, f"sd-g-{u}", "--checkpoint-uri",
                               str(tmp_path / "ckpt"), "--shutdown-timeout-s", str(SHUTDOWN_S),
                               "--request-timeout-ms", "30000", "--kafka-client", kafka_client)
        try:
            produce(bootstrap, tin, tick_messages(generate_ticks(4, 300, seed=3, bad_fraction=0.0)))
            wait_drained(bootstrap, tout, 250, timeout=120)
            proxy.stall()
            time.sleep(1.0)
            elapsed, code = sigterm_and_time(run)
        finally:
            proxy.resume()
            run.kill()
        assert elapsed <= SHUTDOWN_S + MARGIN_S, (elapsed, "".join(run.raw)[-3000:])
        assert code in (0, 1), "".join(run.raw)[-3000:]


def test_sigterm_with_the_store_stalled_abandons_the_checkpoint_and_keeps_the_previous(bundle, kafka_bootstrap,
                                                                                       s3_server):  # noqa: F811
    store_proxy = TcpProxy(s3_server.host, s3_server.port)
    bucket = s3_server.bucket().split("@", 1)[1].split("/", 1)[0]
    query = urlencode({"endpoint_override": store_proxy.address, "scheme": "http", "region": REGION})
    uri = f"s3://{ACCESS_KEY}:{SECRET_KEY}@{bucket}/ckpt?{query}"
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq, group = f"ss-in-{u}", f"ss-out-{u}", f"ss-dlq-{u}", f"ss-g-{u}"
    create_topics(kafka_bootstrap, {tin: 1, tout: 1, dlq: 1})
    messages = tick_messages(generate_ticks(4, 600, seed=5, bad_fraction=0.0))
    run = RunProcess.start(kafka_bootstrap, str(bundle.path), tin, tout, dlq, group, "--checkpoint-uri", uri,
                           "--checkpoint-every-batches", "1", "--checkpoint-interval-s", "0",
                           "--shutdown-timeout-s", str(SHUTDOWN_S))
    try:
        produce(kafka_bootstrap, tin, messages[:300], partition=0)
        deadline = time.monotonic() + 120
        while run.metric("tickcast_checkpoint_writes_total", result="ok") < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.metric("tickcast_checkpoint_writes_total", result="ok") >= 1, "".join(run.raw)[-3000:]
        store_proxy.stall()
        produce(kafka_bootstrap, tin, messages[300:], partition=0)
        wait_drained(kafka_bootstrap, tout, 550, timeout=120)
        elapsed, code = sigterm_and_time(run)
    finally:
        store_proxy.resume()
        run.kill()
    assert elapsed <= SHUTDOWN_S + MARGIN_S, (elapsed, "".join(run.raw)[-3000:])
    assert code == 0, "".join(run.raw)[-3000:]
    assert any(ln.get("event", "").startswith("checkpoint abandoned at its deadline") for ln in run.lines)
    # The checkpoint written before the stall is whole and still loads.
    store = CheckpointStore(f"{bucket}/ckpt/{path_segment(group)}", filesystem=s3_server.filesystem())
    loaded = store.latest(tin, 0)
    assert loaded is not None and 0 < loaded.manifest.offset <= 600
    store_proxy.close()
