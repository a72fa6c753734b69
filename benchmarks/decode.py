"""``python -m benchmarks.decode``: the tick decoder's cost on clean and adversarial batches.

Each row decodes a batch of N messages (default 5,000) with ``pipeline.wire.ticks.decode_batch``, best
of ``repeats``, and prints the time per batch, per message and against the clean batch:

- clean: valid ticks, every one taken by the fast path (Arrow's reader);
- all bad: every message passes the fast-path filter (printable ASCII, one flat object) but Arrow refuses
  it (``"price":"1"``, a string for a number): what once cost a halving re-parse per message;
- half bad: one such message in two, interleaved with valid ticks;
- one bad: a single such message in the middle of a clean batch;
- slow only: every message through the strict per-message parser (the fast path switched off), the
  floor any fallback costs.

The design goal (issue 21, item 7) is that any mix costs at most a small constant times the clean batch.
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np

from pipeline.wire import ticks

T0 = 1_767_225_600_000_000_000


def _good(i: int) -> bytes:
    return (f'{{"v":1,"instrument":"I{i % 500:04d}","ts":{T0 + i},"price":{100 + (i % 97) / 100},'
            f'"size":{1 + i % 7},"bid":99.5,"ask":100.5}}').encode()


def _bad(i: int) -> bytes:
    return f'{{"v":1,"instrument":"I{i % 500:04d}","ts":{T0 + i},"price":"1"}}'.encode()


def batches(n: int) -> dict[str, list[bytes]]:
    return {
        "clean": [_good(i) for i in range(n)],
        "all_bad": [_bad(i) for i in range(n)],
        "half_bad": [_bad(i) if i % 2 else _good(i) for i in range(n)],
        "one_bad": [_bad(i) if i == n // 2 else _good(i) for i in range(n)],
    }


def _time(values: list[bytes], repeats: int) -> float:
    keys = [None] * len(values)
    stamps = np.full(len(values), T0 // 1_000_000, dtype=np.int64)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        ticks.decode_batch(keys, values, stamps)
        best = min(best, time.perf_counter() - t)
    return best


def run(n: int = 5_000, repeats: int = 5) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    cases = batches(n)
    for name, values in cases.items():
        rows[name] = {"seconds": _time(values, repeats)}
    no_fast = lambda vals, lens: (np.zeros(len(vals), dtype=bool), b"")  # noqa: E731
    with mock.patch.object(ticks, "_flat_ascii_objects", no_fast):
        rows["slow_only"] = {"seconds": _time(cases["clean"], repeats)}
    clean = rows["clean"]["seconds"]
    for row in rows.values():
        row["us_per_message"] = row["seconds"] / n * 1e6
        row["x_clean"] = row["seconds"] / clean
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=5_000, help="messages per batch (default 5000)")
    p.add_argument("--repeats", type=int, default=5, help="best of this many decodes (default 5)")
    args = p.parse_args(argv)
    rows = run(args.messages, args.repeats)
    print(f"decode_batch, {args.messages} messages per batch, best of {args.repeats}")
    print(f"{'batch':<10} {'ms/batch':>10} {'us/message':>11} {'x clean':>8}")
    for name, row in rows.items():
        print(f"{name:<10} {row['seconds'] * 1e3:>10.1f} {row['us_per_message']:>11.2f} {row['x_clean']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
