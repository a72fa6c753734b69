"""The metrics/health endpoint against clients that do not play along: half-sent requests hold no thread and
are closed after the channel timeout, /metrics keeps answering, and the server listens where it is told."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics, MetricsServer

HALF_SENT = b"GET /metrics HTTP/1.1\r\nHost: tickcast\r\n"  # no blank line: the request never ends


@pytest.fixture
def server_factory():
    started = []

    def start(**limits) -> MetricsServer:
        server = MetricsServer(Metrics(CollectorRegistry()), "127.0.0.1:0", **limits).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def half_sent_clients(address: str, n: int) -> list[socket.socket]:
    host, port = address.rsplit(":", 1)
    clients = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(HALF_SENT)
        clients.append(s)
    return clients


def get(address: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout) as resp:
        return resp.status, resp.read()


def test_eight_hundred_half_sent_requests_hold_no_thread_and_metrics_still_answers(server_factory):
    server = server_factory()
    get(server.address, "/healthz")  # the workers exist now
    threads_before = threading.active_count()
    clients = half_sent_clients(server.address, 800)
    try:
        time.sleep(0.5)  # let the server accept and read them all
        assert threading.active_count() <= threads_before, "a half-sent request took a thread"
        status, body = get(server.address, "/metrics")
        assert status == 200 and b"tickcast_ticks_received_total" in body
        assert get(server.address, "/healthz") == (200, b"ok\n")
        assert threading.active_count() <= threads_before
    finally:
        for c in clients:
            c.close()


def test_half_sent_requests_are_closed_after_the_channel_timeout_and_the_limit_frees_up(server_factory):
    server = server_factory(connection_limit=20, channel_timeout=1, cleanup_interval=1)
    clients = half_sent_clients(server.address, 20)  # the whole connection limit
    try:
        # Each held connection is closed by the server (EOF) once it has sat half-sent past the timeout.
        deadline = time.monotonic() + 10
        closed = 0
        for c in clients:
            c.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += c.recv(1024) == b""
            except (TimeoutError, socket.timeout):
                pass
        assert closed == len(clients)
        assert get(server.address, "/metrics")[0] == 200
    finally:
        for c in clients:
            c.close()


def test_an_oversized_request_header_is_refused_not_buffered(server_factory):
    server = server_factory()
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 64 * 1024 + b"\r\n\r\n")
        reply = s.recv(1024)
    status_line = reply.split(b"\r\n")[0]
    assert status_line.startswith(b"HTTP/1.") and status_line.split()[1] in (b"400", b"431"), status_line


def test_the_server_listens_on_the_configured_address_only(server_factory):
    server = server_factory()
    assert server.address.startswith("127.0.0.1:")
    bound = server._server.socket.getsockname()
    assert bound[0] == "127.0.0.1"


def test_the_readme_states_the_endpoint_limits_the_server_uses():
    from pathlib import Path

    from pipeline.metrics import ENDPOINT_LIMITS

    readme = " ".join((Path(__file__).resolve().parents[3] / "README.md").read_text().split())
    limits = ENDPOINT_LIMITS
    stated = (f"worker thread (two) sees them, at most {limits['connection_limit']:,} connections, "
              f"{limits['max_request_header_size'] // 1024} KiB of headers, {limits['channel_timeout']} s idle")
    assert limits["threads"] == 2 and stated in readme
