"""Helpers for live tests: a `tickcast run` process, an independent client, scraping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import pyarrow as pa
from confluent_kafka import Producer

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


@dataclass
class RunProcess:
    """`tickcast run` as a child process, its JSON log lines collected as they come."""

    proc: subprocess.Popen
    lines: list[dict] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, bootstrap: str, model: str, topic: str, out: str, dlq: str, group: str, *extra: str,
              env: dict[str, str] | None = None) -> "RunProcess":
        args = [sys.executable, "-m", "pipeline.cli", "run", "--model", model, "--bootstrap-servers", bootstrap,
                "--input-topics", topic, "--output-topic", out, "--dead-letter-topic", dlq, "--group-id", group,
                "--metrics-address", "127.0.0.1:0", "--status-interval-s", "1", "--log-format", "json",
                "--max-batch-ms", "20", *extra]
        if "--checkpoint-uri" not in extra:  # never litter the working directory
            args += ["--checkpoint-uri", tempfile.mkdtemp(prefix="tickcast-ckpt-")]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=ENV if env is None else env)
        rp = cls(proc)
        threading.Thread(target=rp._pump, daemon=True).start()
        return rp

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass

    def wait_for(self, event: str, timeout: float = 60.0, **match) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                    return line
            if self.proc.poll() is not None and seen == len(self.lines):
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} log line within {timeout}s; stderr:\n{''.join(self.raw)[-4000:]}")

    def wait_for_any(self, events, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.get("event") in events:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"none of {events} within {timeout}s; stderr:\n{''.join(self.raw)[-4000:]}")

    @property
    def metrics_url(self) -> str:
        return self.wait_for("starting")["metrics"]

    def scrape(self, path: str = "/metrics") -> tuple[int, str]:
        url = self.metrics_url.rsplit("/", 1)[0] + path
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        _, text = self.scrape()
        total = 0.0
        found = False
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, value = line.rsplit(" ", 1)
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
                found = True
        return total if found else 0.0

    def wait_metric(self, name: str, done, timeout: float = 60.0, **labels: str) -> float:
        """The metric's value once ``done(value)`` holds (metrics are updated after a batch settles, a moment
        after its output is readable: poll, never sleep and hope); fails after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not done(value := self.metric(name, **labels)):
            assert time.monotonic() < deadline, f"{name}{labels or ''} = {value} after {timeout}s"
            time.sleep(0.1)
        return value

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]],
            partition: int | None = None) -> None:
    """Produce with confluent-kafka (librdkafka): a client independent of the one under test."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": False})
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    for key, value in messages:
        kwargs = {"partition": partition} if partition is not None else {}
        while True:
            try:
                p.produce(topic, key=key, value=value, on_delivery=report, **kwargs)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(30) == 0, "messages left unflushed"
    assert not errors, errors


def tick_messages(ticks: pa.Table) -> list[tuple[bytes, bytes]]:
    """Schema-v1 JSON built with the standard library (not tickcast's encoder)."""
    out = []
    for row in ticks.to_pylist():
        value = {"v": 1, **{k: v for k, v in row.items() if v is not None}}
        out.append((row["instrument"].encode(), json.dumps(value).encode()))
    return out
