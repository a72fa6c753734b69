"""TLS on the wire: `tickcast run` (both clients) and `tickcast replay` against the embedded broker behind a
TLS front with a certificate signed by a CA the test makes; a wrong CA or a wrong host name ends the process
with one clear line and a non-zero exit, not a retry loop."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.files.sinks import write_parquet
from pipeline.files.synthetic import generate_ticks
from pipeline.kafka.broker import EmbeddedBroker, create_topics
from tests.support.live import ENV, RunProcess

# A failed handshake must end the process well before this: a retry loop never does.
GIVE_UP_S = 60


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, pem = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(pem), "-days", "2",
             "-subj", f"/CN={name}")
    return pem, key


def _server_cert(d: Path, name: str, ca: tuple[Path, Path], san: str) -> tuple[Path, Path]:
    key, csr, pem, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-out", str(pem), "-days", "2", "-extfile", str(ext))
    return pem, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other_ca = _ca(d, "tickcast-test-ca"), _ca(d, "some-other-ca")
    return {"ca": ca[0], "other_ca": other_ca[0],
            "server": _server_cert(d, "broker", ca, "DNS:localhost,IP:127.0.0.1"),
            "elsewhere": _server_cert(d, "elsewhere", ca, "DNS:elsewhere.example")}


@pytest.fixture(scope="module")
def tls_broker(pki):
    broker = EmbeddedBroker(tls=pki["server"])
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _tls_env(cafile: Path) -> dict[str, str]:
    return {**ENV, "TICKCAST_SECURITY_PROTOCOL": "SSL", "TICKCAST_SSL_CAFILE": str(cafile)}


def _topics(broker, cafile: Path) -> tuple[str, str, str, str]:
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq = f"tls-in-{u}", f"tls-out-{u}", f"tls-dlq-{u}"
    create_topics(broker.bootstrap, {tin: 1, tout: 1, dlq: 1},
                  security={"security_protocol": "SSL", "ssl_cafile": str(cafile)})
    return tin, tout, dlq, f"tls-g-{u}"


def _read_over_tls(bootstrap: str, cafile: Path, topic: str, expected: int, timeout: float = 60.0) -> list:
    c = Consumer({"bootstrap.servers": bootstrap, "security.protocol": "SSL", "ssl.ca.location": str(cafile),
                  "group.id": f"read-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out, deadline = [], time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                out.append(m)
    finally:
        c.close()
    return out


def _replay(bootstrap: str, ticks_file: Path, topic: str, env: dict[str, str],
            kafka_client: str = "kafka-python") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "replay", "--input", str(ticks_file), "--topic",
                           topic, "--bootstrap-servers", bootstrap, "--speed", "0", "--quiet",
                           "--kafka-client", kafka_client],
                          capture_output=True, text=True, env=env, timeout=GIVE_UP_S)


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_run_and_replay_over_tls(tls_broker, pki, bundle, tmp_path, kafka_client):
    tin, tout, dlq, group = _topics(tls_broker, pki["ca"])
    ticks = generate_ticks(5, 400, seed=7, bad_fraction=0.0)
    write_parquet(ticks, tmp_path / "t.parquet")
    env = _tls_env(pki["ca"])
    before = tls_broker.front.handshakes
    run = RunProcess.start(tls_broker.bootstrap, str(bundle.path), tin, tout, dlq, group,
                           "--kafka-client", kafka_client, env=env)
    try:
        assert run.wait_for("starting")["kafka_client"] == kafka_client
        out = _replay(tls_broker.bootstrap, tmp_path / "t.parquet", tin, env, kafka_client)
        assert out.returncode == 0, out.stderr
        assert "400 ticks published" in out.stdout
        got = _read_over_tls(tls_broker.bootstrap, pki["ca"], tout, expected=400)
    finally:
        assert run.stop() == 0
    assert len(got) == 400
    assert {json.loads(m.value())["offset"] for m in got} == set(range(400))
    assert tls_broker.front.handshakes > before  # the clients spoke TLS, through the front, not around it


def _one_clear_line(stderr: str) -> str:
    """The single line naming the failure (a `tickcast: error:` line, or one JSON log line at error level)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("tickcast: error:")
              or (ln.startswith("{") and json.loads(ln).get("level") in ("error", "critical", "ERROR", "CRITICAL"))]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
@pytest.mark.parametrize("case", ["wrong_ca", "wrong_hostname"])
def test_a_refused_certificate_ends_run_with_one_clear_line(pki, tls_broker, bundle, kafka_client, case,
                                                             request):
    if case == "wrong_ca":
        broker, cafile = tls_broker, pki["other_ca"]
    else:  # the right CA, but the certificate names another host
        broker = EmbeddedBroker(tls=pki["elsewhere"])
        broker.start()
        request.addfinalizer(broker.stop)
        cafile = pki["ca"]
    u = uuid.uuid4().hex[:8]
    started = time.monotonic()
    run = RunProcess.start(broker.bootstrap, str(bundle.path), f"in-{u}", f"out-{u}", f"dlq-{u}", f"g-{u}",
                           "--kafka-client", kafka_client, env=_tls_env(cafile))
    try:
        code = run.proc.wait(timeout=GIVE_UP_S)
    finally:
        run.kill()
    elapsed = time.monotonic() - started
    time.sleep(0.2)  # the stderr pump's last lines
    stderr = "".join(run.raw)
    assert code == 2, stderr[-3000:]  # an operator must act: exit 2, no restart loop
    line = _one_clear_line(stderr)
    assert "certificate was refused" in line and broker.bootstrap in line, line
    print(f"{kafka_client} {case}: exit {code} after {elapsed:.1f}s: {line}")


@pytest.mark.parametrize("kafka_client", ["kafka-python", "confluent"])
def test_a_refused_certificate_ends_replay_with_one_clear_line(tls_broker, pki, tmp_path, kafka_client):
    write_parquet(generate_ticks(2, 20, seed=1, bad_fraction=0.0), tmp_path / "t.parquet")
    started = time.monotonic()
    out = _replay(tls_broker.bootstrap, tmp_path / "t.parquet", f"never-{uuid.uuid4().hex[:8]}",
                  _tls_env(pki["other_ca"]), kafka_client)
    assert out.returncode == 2, out.stderr[-3000:]
    line = _one_clear_line(out.stderr)
    assert "certificate was refused" in line, line
    print(f"replay {kafka_client} wrong_ca: exit {out.returncode} after {time.monotonic() - started:.1f}s: {line}")
