"""The fault tests' reference and checks, shared by test_faults.py, test_producer_faults.py and
test_backtest_topic.py: an input read back by an independent client, the undisturbed answer, and the
assertion that a run's output is exactly that answer."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pytest

from operators.forecaster import Forecaster
from pipeline.checkpoint import group_store
from pipeline.wire.ticks import decode_batch
from tests.support.readers import read_committed

PARTITIONS = 2


def reference(bundle, inputs, partitions: int = PARTITIONS) -> tuple[dict, dict[int, pa.Table], int]:
    """Undisturbed forecasts by (partition, offset), final state per partition, and the dead-letter count."""
    forecasts, states, dead = {}, {}, 0
    for p in range(partitions):
        msgs = sorted((m for m in inputs if m.partition() == p), key=lambda m: m.offset())
        decoded = decode_batch([m.key() for m in msgs], [m.value() for m in msgs])
        dead += len(decoded.rejected)
        idx = decoded.ticks.column("index").to_numpy()
        fc = Forecaster(bundle)
        res = fc.step(decoded.ticks)
        dead += int((res.reasons != 0).sum())
        for row, value in zip(res.rows.tolist(), res.forecasts.tolist()):
            forecasts[(p, msgs[idx[row]].offset())] = value
        states[p] = fc.export_partition(0)
    return forecasts, states, dead


def _duplicates(out, keys) -> str:
    """Who published the duplicated forecasts: per input partition, the output offsets and producer ids of
    the first few duplicated keys (enough to tell a zombie writer from a replay)."""
    seen: dict = {}
    for m, key in zip(out, keys):
        seen.setdefault(key, []).append((m.offset(), getattr(m, "producer_id", -1)))
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    by_part: dict = {}
    for (part, offset), where in sorted(dup.items()):
        by_part.setdefault(part, []).append((offset, where))
    return "; ".join(f"input partition {p}: {len(v)} keys, offsets {v[0][0]}..{v[-1][0]}, first {v[:2]}"
                     for p, v in by_part.items())


def assert_exactly_the_reference(bundle, bootstrap, tin, tout, dlq, store_dir, group, forecasts_ref, states_ref,
                                 dead_ref, partitions: int = PARTITIONS):
    assert_topic_holds(bundle, bootstrap, tout, forecasts_ref)
    assert len(read_committed(bootstrap, dlq, 1, timeout=3)) == dead_ref
    assert_checkpointed_state(bundle, store_dir, group, tin, states_ref, partitions)


def committed_forecasts(bootstrap, topic) -> dict[str, dict[tuple[int, int], float]]:
    """A forecast topic as a read_committed reader sees it: forecasts by model version, then by source
    (partition, offset); a forecast published twice fails."""
    out = read_committed(bootstrap, topic, 1)
    keys = [(json.loads(m.value())["partition"], json.loads(m.value())["offset"]) for m in out]
    if len(keys) != len(set(keys)):
        raise AssertionError(f"{len(keys) - len(set(keys))} forecasts published twice: {_duplicates(out, keys)}")
    by_version: dict[str, dict[tuple[int, int], float]] = {}
    for m, key in zip(out, keys):
        body = json.loads(m.value())
        by_version.setdefault(body["model_version"], {})[key] = body["forecast"]
    return by_version


def assert_forecasts_equal(bundle, got: dict, expected: dict, what: str = "") -> None:
    """The same sources, nothing missing or extra, the same numbers to float32 tolerance."""
    missing = set(expected) - set(got)
    assert not missing, f"{what}{len(missing)} forecasts missing, e.g. {sorted(missing)[:5]}"
    assert set(got) == set(expected), f"{what}{len(set(got) - set(expected))} forecasts not in the reference"
    scale = bundle.normalisation.target_std
    for key, value in got.items():
        assert value / scale == pytest.approx(expected[key] / scale, rel=1e-5, abs=1e-5), (what, key)


def assert_topic_holds(bundle, bootstrap, topic, forecasts_ref) -> None:
    """``topic`` holds exactly ``forecasts_ref``, each once, all by ``bundle``'s model version."""
    by_version = committed_forecasts(bootstrap, topic)
    assert set(by_version) <= {bundle.model_version}, f"other models' forecasts in {topic}: {set(by_version)}"
    assert_forecasts_equal(bundle, by_version.get(bundle.model_version, {}), forecasts_ref, f"{topic}: ")


def assert_checkpointed_state(bundle, store_dir, group, tin, states_ref, partitions: int = PARTITIONS) -> None:
    """The newest checkpoint of every partition holds ``bundle``'s state equal to the reference's."""
    store = group_store(str(store_dir), group)  # a directory or a URI (s3://...?endpoint_override=...)
    for p in range(partitions):
        final = store.latest(tin, p)
        assert final is not None, f"no checkpoint for partition {p}"
        assert bundle.model_version in final.states, f"partition {p}: no state of {bundle.model_version}"
        a = final.states[bundle.model_version].sort_by("instrument")
        b = states_ref[p].sort_by("instrument")
        assert a.column("instrument").equals(b.column("instrument"))
        for name in ("tick_count", "last_ts", "last_price"):
            assert a.column(name).equals(b.column(name)), name
        for layer in range(bundle.shape.layers):
            for prefix in ("h", "c"):
                col = f"{prefix}{layer}"
                np.testing.assert_allclose(a.column(col).combine_chunks().flatten().to_numpy(),
                                           b.column(col).combine_chunks().flatten().to_numpy(), rtol=1e-5, atol=1e-6)


def run_args(store_dir, tid: str, *extra: str) -> list[str]:
    return ["--processing", "exactly_once", "--checkpoint-uri", str(store_dir), "--transactional-id", tid,
            "--checkpoint-every-batches", "3", "--checkpoint-interval-s", "0", "--max-batch-ticks", "150",
            "--session-timeout-ms", "4000", *extra]


def wait_drained(bootstrap, tout, expected: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_committed(bootstrap, tout, 1, timeout=2)) >= expected:
            return
        time.sleep(1)
    raise AssertionError(f"forecasts did not reach {expected} within {timeout}s")


def wait_for_checkpoints(store_dir, group: str, topic: str, partitions: int = PARTITIONS,
                         timeout: float = 120.0) -> None:
    """Until the store holds a usable checkpoint of every partition of ``topic`` (a fact a restart can rely
    on, whatever the machine's speed); fails after ``timeout`` s."""
    store = group_store(str(store_dir), group)
    deadline = time.monotonic() + timeout
    while any(store.latest(topic, p) is None for p in range(partitions)):
        assert time.monotonic() < deadline, f"no checkpoint of every partition of {topic} within {timeout}s"
        time.sleep(0.2)


def failing_first(times: int, call, error: BaseException):
    """``call`` that raises ``error`` on its first ``times`` calls, then behaves (a store or broker that
    recovers)."""
    left = [times]

    def flaky(*args, **kwargs):
        if left[0]:
            left[0] -= 1
            raise error
        return call(*args, **kwargs)

    return flaky
