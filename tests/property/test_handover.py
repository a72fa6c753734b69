"""A partition's state handed from one operator to another (checkpoint, rebalance) changes nothing.

Two partitions' ticks are stepped in random micro-batches; at a random batch
boundary one partition is exported, dropped, and imported into a brand-new
operator (through Arrow IPC bytes, as a checkpoint would carry it). The
forecasts after the hand-over and the final state rows equal an undisturbed
run's, bit for bit, with expiry and session resets on.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.forecaster import Forecaster, ForecasterConfig
from tests.support.bundles import in_target_units
from tests.support.strategies import splits, tick_streams

SECOND = 1_000_000_000


def _ipc_roundtrip(table: pa.Table) -> pa.Table:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return pa.ipc.open_stream(sink.getvalue()).read_all()


def _with_partitions(ticks: pa.Table, parts: np.ndarray) -> pa.Table:
    return ticks.append_column("partition", pa.array(parts, pa.int32()))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_export_import_continues_exactly(bundle, data):
    ticks = data.draw(tick_streams(max_ticks=120))
    n = ticks.num_rows
    parts = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int32)
    ticks = _with_partitions(ticks, parts)
    bounds = data.draw(splits(n))
    cut = data.draw(st.integers(0, len(bounds)))
    moved = data.draw(st.integers(0, 1))
    cfg = ForecasterConfig(expire_after_ns=data.draw(st.sampled_from([None, 2 * SECOND, 5 * SECOND])))

    whole = Forecaster(bundle, cfg)
    expect_rows, expect = [], []
    for a, b in bounds:
        res = whole.step(ticks.slice(a, b - a))
        expect_rows.append(res.rows + a)
        expect.append(res.forecasts)

    first, second = Forecaster(bundle, cfg), Forecaster(bundle, cfg)
    got_rows, got = [], []
    for i, (a, b) in enumerate(bounds):
        if i == cut:
            snapshot = _ipc_roundtrip(first.export_partition(moved))
            first.drop_partition(moved)
            second.import_partition(moved, snapshot)
        batch = ticks.slice(a, b - a)
        if i < cut:
            res = first.step(batch)
            got_rows.append(res.rows + a)
            got.append(res.forecasts)
            continue
        # After the hand-over each operator sees only its own partition, as after a rebalance.
        mine = batch.column("partition").to_numpy() == moved
        rows, forecasts = [], []
        for fc, mask in ((second, mine), (first, ~mine)):
            idx = np.flatnonzero(mask)
            res = fc.step(batch.take(pa.array(idx, pa.int64())))
            rows.append(idx[res.rows] + a)
            forecasts.append(res.forecasts)
        rows, forecasts = np.concatenate(rows), np.concatenate(forecasts)
        order = np.argsort(rows, kind="stable")
        got_rows.append(rows[order])
        got.append(forecasts[order])

    np.testing.assert_array_equal(np.concatenate(got_rows), np.concatenate(expect_rows))
    # Same tolerance as batch invariance: a batch's shape may change BLAS's summation order.
    np.testing.assert_allclose(in_target_units(bundle, np.concatenate(got)),
                               in_target_units(bundle, np.concatenate(expect)), rtol=1e-5, atol=1e-5)
    owner = {moved: second if cut < len(bounds) else first, 1 - moved: first}
    for p in (0, 1):
        a = whole.export_partition(p).sort_by("instrument")
        b = owner[p].export_partition(p).sort_by("instrument")
        assert a.schema.metadata == b.schema.metadata, "expiry clocks differ"
        for name in a.column_names:
            x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(x.type) or pa.types.is_floating(x.type):
                x = x.flatten() if pa.types.is_fixed_size_list(x.type) else x
                y = y.flatten() if pa.types.is_fixed_size_list(y.type) else y
                np.testing.assert_allclose(x.to_numpy(), y.to_numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
            else:
                assert x.equals(y), f"partition {p} column {name} differs after the hand-over"
