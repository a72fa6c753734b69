"""The expiry watermark is bounded by more than one producer's word: one record whose timestamp and event
time are forged far ahead (accepted: its Kafka CreateTime vouches for it) cannot expire the other
instruments of its partition, and the watermark stays a function of the partition's tick sequence alone,
whatever the batch boundaries."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from operators.forecaster import WATERMARK_WINDOW, Forecaster, ForecasterConfig
from operators.state import NO_TS
from tests.support.strategies import SETTINGS, splits, tick_streams

T0 = 1_767_225_600_000_000_000  # 2026-01-01
SEC = 1_000_000_000
DAY = 86_400 * SEC
T2096 = 3_976_300_800_000_000_000  # 2096-01-01: before the 2100 bound, so only the producer's word limits it


def _table(names, ts, price=None) -> pa.Table:
    n = len(names)
    return pa.table({"instrument": pa.array(names, pa.string()), "ts": pa.array(ts, pa.int64()),
                     "price": pa.array(price if price is not None else [10.0 + i % 7 for i in range(n)]),
                     "size": pa.array([1.0] * n), "record_ts": pa.array(ts, pa.int64())})  # CreateTime = event time


def _watermark(fc: Forecaster, partition: int = 0) -> int:
    return int(fc.export_partition(partition).schema.metadata[b"tickcast.watermark_ns"])


def _live_partition(bundle, **config) -> Forecaster:
    fc = Forecaster(bundle, ForecasterConfig(expire_after_ns=2 * DAY, **config))
    names = [f"I{i}" for i in range(5)] * 20
    fc.step(_table(names, [T0 + i * SEC for i in range(len(names))]))
    return fc


def test_a_forged_far_future_record_expires_no_other_instrument(bundle):
    """The issue's case: expire_after = 2d (the shipped configs), five live instruments, then one record dated
    2096 by its CreateTime and its event time. Before, the watermark jumped to 2096 and every other row of the
    partition expired at once."""
    fc = _live_partition(bundle)
    forged = fc.step(_table(["FORGED"], [T2096]))
    assert forged.reasons.tolist() == [0]  # accepted: its CreateTime vouches for it (the topic config bounds that)
    assert forged.n_expired == 0 and sorted(fc.state.instruments) == ["FORGED", "I0", "I1", "I2", "I3", "I4"]
    assert _watermark(fc) < T0 + DAY  # moved by the real ticks only
    later = fc.step(_table([f"I{i}" for i in range(5)], [T0 + (200 + i) * SEC for i in range(5)]))
    assert later.reasons.tolist() == [0] * 5 and later.n_expired == 0


def test_fewer_forged_records_than_the_window_move_nothing_and_a_full_window_does(bundle):
    fc = _live_partition(bundle)
    res = fc.step(_table([f"F{i}" for i in range(WATERMARK_WINDOW - 1)], [T2096 + i for i in range(WATERMARK_WINDOW - 1)]))
    assert res.n_expired == 0 and _watermark(fc) < T0 + DAY
    # Interleaved with real ticks they never move it, however many there are.
    names, ts = [], []
    for i in range(5 * WATERMARK_WINDOW):
        names += [f"I{i % 5}", f"G{i}"]
        ts += [T0 + (300 + i) * SEC, T2096 + 100 + i]
    res = fc.step(_table(names, ts))
    assert res.n_expired == 0 and _watermark(fc) < T0 + DAY
    # What it takes (the documented bound): WATERMARK_WINDOW consecutive ticks at the new time.
    res = fc.step(_table([f"H{i}" for i in range(WATERMARK_WINDOW)], [T2096 + 10_000 + i for i in range(WATERMARK_WINDOW)]))
    assert _watermark(fc) >= T2096 and res.n_expired > 0


def reference_watermark(ts: np.ndarray, window: int) -> int:
    """The definition, written the slow way: the largest, over runs of ``window`` consecutive clock ticks,
    of the run's smallest event time."""
    best = NO_TS
    for end in range(window, len(ts) + 1):
        best = max(best, int(ts[end - window:end].min()))
    return best


@st.composite
def streams_with_forgeries(draw):
    """A tick stream (tests.support.strategies) with CreateTime = event time, some ticks moved to 2096."""
    ticks = draw(tick_streams(max_ticks=120))
    ts = ticks.column("ts").to_numpy().copy()
    if len(ts):
        forged = draw(st.lists(st.integers(0, len(ts) - 1), max_size=max(len(ts) // 4, 1)))
        ts[forged] = T2096 + np.arange(len(forged))
    ticks = ticks.set_column(ticks.column_names.index("ts"), "ts", pa.array(ts, pa.int64()))
    return ticks.append_column("record_ts", pa.array(ts, pa.int64()))


@SETTINGS
@given(data=st.data())
def test_the_watermark_is_the_same_for_any_batch_split(bundle, data):
    ticks = data.draw(streams_with_forgeries())
    window = data.draw(st.sampled_from([1, 3, WATERMARK_WINDOW]))
    config = ForecasterConfig(expire_after_ns=data.draw(st.sampled_from([5 * SEC, DAY])), watermark_window=window)
    alone = Forecaster(bundle, config)
    reasons = np.concatenate([alone.step(ticks.slice(i, 1)).reasons for i in range(ticks.num_rows)]
                             or [np.zeros(0, np.uint8)])
    clock_ts = ticks.column("ts").to_numpy()[reasons == 0]  # the ticks stepped: every clock tick here
    want = reference_watermark(clock_ts, window)
    assert _watermark(alone) == want
    split = Forecaster(bundle, config)
    for a, b in data.draw(splits(ticks.num_rows)):
        split.step(ticks.slice(a, b - a))
    assert _watermark(split) == want
    meta = split.export_partition(0).schema.metadata
    if len(clock_ts):
        assert meta[b"tickcast.recent_ts"] == ",".join(map(str, clock_ts[-window:].tolist())).encode()


@SETTINGS
@given(data=st.data())
def test_a_hand_over_mid_stream_continues_the_same_watermark(bundle, data):
    """The last event times travel with the partition's state (checkpoints, rebalances)."""
    ticks = data.draw(streams_with_forgeries())
    cut = data.draw(st.integers(0, ticks.num_rows))
    config = ForecasterConfig(expire_after_ns=DAY)
    whole = Forecaster(bundle, config)
    whole.step(ticks)
    first, second = Forecaster(bundle, config), Forecaster(bundle, config)
    first.step(ticks.slice(0, cut))
    second.import_partition(0, first.export_partition(0))
    second.step(ticks.slice(cut))
    assert _watermark(second) == _watermark(whole)


def test_the_last_event_times_survive_a_checkpoint_and_a_forged_list_is_refused(bundle, tmp_path):
    import pytest

    from pipeline.checkpoint import CheckpointError, CheckpointStore, Problem

    fc = _live_partition(bundle)
    store = CheckpointStore(str(tmp_path / "store"))
    store.write("ticks", 0, fc.export_partition(0), 10**6, bundle.model_version, {})
    restored = Forecaster(bundle, ForecasterConfig(expire_after_ns=2 * DAY))
    restored.import_partition(0, store.latest("ticks", 0).state)
    assert restored.export_partition(0).schema.metadata[b"tickcast.recent_ts"] == \
        fc.export_partition(0).schema.metadata[b"tickcast.recent_ts"]
    table = fc.export_partition(0)
    for bad in (b"soon", b"1,,2", b"9" * 30, b",".join([b"1"] * 2000)):
        meta = dict(table.schema.metadata)
        meta[b"tickcast.recent_ts"] = bad
        with pytest.raises(CheckpointError, match="recent_ts"):
            store.write("ticks", 0, table.replace_schema_metadata(meta), 2 * 10**6, bundle.model_version, {})
    problems: list[Problem] = []
    assert store.latest("ticks", 0, problems=problems).manifest.offset == 10**6 and not problems
