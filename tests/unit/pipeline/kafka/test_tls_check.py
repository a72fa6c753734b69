"""check_tls: which handshake outcomes end the run (one ConfigError line) and which are left to the clients'
retries; no broker needed."""

from __future__ import annotations

import socket
import threading

import pytest

from pipeline.config import ConfigError
from pipeline.kafka.broker import free_port
from pipeline.kafka.tls import check_tls


def _plain_server(reply: bytes) -> str:
    """A listener that answers the ClientHello with ``reply`` (not TLS) and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = server.accept()
        conn.recv(4096)
        conn.sendall(reply)
        conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{server.getsockname()[1]}"


def test_nothing_is_checked_without_ssl():
    check_tls("127.0.0.1:1", {"security_protocol": "PLAINTEXT"})
    check_tls("127.0.0.1:1", {"security_protocol": "SASL_PLAINTEXT"})


def test_a_listener_that_speaks_no_tls_is_one_config_error_line():
    address = _plain_server(b"HTTP/1.0 400 Bad Request\r\n\r\n")
    with pytest.raises(ConfigError) as info:
        check_tls(address, {"security_protocol": "SSL"})
    message = str(info.value)
    assert "\n" not in message and address in message and "is it a TLS listener" in message


@pytest.mark.parametrize("outcome", ["refused", "closed"])
def test_a_server_that_is_down_or_hangs_up_is_left_to_the_clients_retries(outcome):
    if outcome == "refused":
        address = f"127.0.0.1:{free_port()}"
    else:
        address = _plain_server(b"")  # accepts, reads the ClientHello, closes: a broker restarting
    check_tls(address, {"security_protocol": "SSL"}, timeout_s=2)  # no ConfigError
