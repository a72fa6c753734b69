"""Every feature of the registry is the same bit for bit however the ticks are cut into micro-batches: the
previous tick's mid and trade sign chain through the state table (and through a restore of it) exactly as
training chains them through a whole sequence."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from operators.features import KNOWN_FEATURES
from operators.forecaster import Forecaster, ForecasterConfig
from operators.training import sequences_from_table
from tests.support.features import edgy_ticks, numpy_bundle, streamed_raw
from tests.support.strategies import SETTINGS, splits

RESET_NS = 60 * 10**9


def every_feature_in_some_order(data):
    return data.draw(st.permutations(KNOWN_FEATURES))


@SETTINGS
@given(data=st.data())
def test_streaming_in_any_micro_batches_equals_training_over_the_whole_sequence(data):
    names = tuple(every_feature_in_some_order(data))
    ticks = data.draw(edgy_ticks())
    bounds = data.draw(splits(ticks.num_rows))
    seq = sequences_from_table(ticks, names)
    reasons, raw = streamed_raw(Forecaster(numpy_bundle(names)), ticks, bounds)
    np.testing.assert_array_equal(reasons, seq.rejected)
    np.testing.assert_array_equal(raw[seq.order], seq.raw_features)  # bit for bit, every feature
    stepped = np.zeros(ticks.num_rows, dtype=bool)
    stepped[seq.order] = True
    assert np.isnan(raw[~stepped]).all()
    assert np.isfinite(seq.raw_features).all()


def _restored(fc: Forecaster) -> Forecaster:
    """A new Forecaster from ``fc``'s partition 0 written to Arrow IPC and read back (what a checkpoint holds)."""
    sink = io.BytesIO()
    table = fc.export_partition(0)
    with pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    fresh = Forecaster(fc.bundle, fc.config)
    fresh.import_partition(0, pa.ipc.open_file(pa.BufferReader(sink.getvalue())).read_all())
    return fresh


@SETTINGS
@given(data=st.data())
def test_with_session_resets_and_restores_any_micro_batches_equal_one_batch(data):
    names = tuple(every_feature_in_some_order(data))
    ticks = data.draw(edgy_ticks())
    bounds = data.draw(splits(ticks.num_rows))
    restore_before = set(data.draw(st.lists(st.integers(1, max(len(bounds) - 1, 1)), max_size=3)))
    config = ForecasterConfig(reset_gap_ns=RESET_NS)
    bundle = numpy_bundle(names)
    want_reasons, want = streamed_raw(Forecaster(bundle, config), ticks, [(0, ticks.num_rows)])
    reasons, raw = streamed_raw(Forecaster(bundle, config), ticks, bounds,
                                between=lambda fc, i: _restored(fc) if i in restore_before else fc)
    np.testing.assert_array_equal(reasons, want_reasons)
    np.testing.assert_array_equal(raw, want)  # bit for bit (NaN rows: the same refused ticks)
