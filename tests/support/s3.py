"""A real S3 endpoint for tests: moto's server as a child process on a free port.

Like the embedded broker: started once per session, spoken to over HTTP by
pyarrow's own S3 client, stopped by its process id. Tests that need it take
the ``s3_server`` fixture (skipped, with the reason, when ``moto[server]`` is
not installed); each test gets its own bucket from ``S3Server.bucket()``.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest

from pipeline.kafka.broker import free_port

REGION = "us-east-1"
# moto accepts any credentials; they are here so a URI can carry them like a real deployment's would.
ACCESS_KEY, SECRET_KEY = "tickcast-test-key", "tickcast-test-secret"


@dataclass
class S3Server:
    proc: subprocess.Popen
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def query(self) -> str:
        """What a checkpoint_uri needs to reach this endpoint (pyarrow's documented S3 URI options)."""
        return urlencode({"endpoint_override": self.endpoint, "scheme": "http", "region": REGION})

    def filesystem(self):
        import pyarrow.fs as pafs  # noqa: PLC0415

        return pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", region=REGION,
                                 access_key=ACCESS_KEY, secret_key=SECRET_KEY, allow_bucket_creation=True)

    def bucket(self, prefix: str = "ckpt") -> str:
        """A fresh bucket; returns ``s3://KEY:SECRET@<bucket>/<prefix>?<endpoint options>`` (credentials in
        the URI's user info, the endpoint in its query: the form pyarrow documents)."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.filesystem().create_dir(name)
        return f"s3://{ACCESS_KEY}:{SECRET_KEY}@{name}/{prefix}?{self.query()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_s3_server(host: str = "127.0.0.1") -> S3Server:
    port = free_port(host)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = S3Server(proc, host, port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://{host}:{port}/moto-api/", timeout=1).close()
            return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    server.stop()
    raise RuntimeError("moto server did not answer within 30 s")


def moto_missing() -> str | None:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        return "moto[server] is not installed (pip install -e '.[test]'); S3 variants need a real S3 endpoint"
    return None


@pytest.fixture(scope="session")
def s3_server():
    reason = moto_missing()
    if reason:
        pytest.skip(reason)
    server = start_s3_server()
    try:
        yield server
    finally:
        server.stop()
