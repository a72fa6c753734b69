"""A TCP proxy the test controls: forwards to the broker until told to cut every connection, or to stall
(hold every byte, connections open, until resumed: a broker that stops answering)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
import time


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server((host, 0))
        self.address = f"{host}:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        self.stalled = threading.Event()
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()  # refused while cut: the client sees a dropped connection
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                while self.stalled.is_set() and not self.cut.is_set():
                    time.sleep(0.05)  # held, not dropped: delivered late once resumed
                if not data or self.cut.is_set():
                    break
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

    def sever(self) -> None:
        """Drop every open connection and refuse new ones until :meth:`heal`."""
        self.cut.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stall(self) -> None:
        """Stop forwarding (both ways) but keep every connection open, until :meth:`resume`."""
        self.stalled.set()

    def resume(self) -> None:
        self.stalled.clear()

    def heal(self) -> None:
        self.cut.clear()

    def close(self) -> None:
        self._closed = True
        self.sever()
        self.listener.close()


@contextmanager
def broker_behind_proxy() -> Iterator[TcpProxy]:
    """An embedded broker that advertises a TcpProxy in front of it, so every client connection (bootstrap
    and after metadata) goes through the proxy the test controls; both stop on exit."""
    from pipeline.kafka.broker import EmbeddedBroker, free_port

    broker_port = free_port()
    proxy = TcpProxy("127.0.0.1", broker_port)
    broker = EmbeddedBroker(port=broker_port, advertised=proxy.address)
    broker.start()
    try:
        yield proxy
    finally:
        broker.stop()
        proxy.close()
