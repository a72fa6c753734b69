"""Checkpoints keep what a bundle's features need of each instrument's previous tick (mid, trade sign), and
nothing more for the five original features: a restore continues every feature exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from operators.features import FEATURE_NAMES, KNOWN_FEATURES
from operators.forecaster import Forecaster
from pipeline.checkpoint import group_store
from pipeline.files.synthetic import generate_ticks
from tests.support.features import numpy_bundle

OLD_COLUMNS = ["instrument", "partition", "last_price", "last_ts", "tick_count", "last_offset", "h0", "c0"]


def _ticks() -> tuple[pa.Table, pa.Table]:
    """Two halves of a stream; the first ends with ticks without a bid, so some rows keep no mid (NaN)."""
    ticks = generate_ticks(6, 600, seed=8, bad_fraction=0.0)
    first, rest = ticks.slice(0, 300), ticks.slice(300)
    bid = first.column("bid").to_numpy().astype(object)
    bid[-20:] = None
    first = first.set_column(first.column_names.index("bid"), "bid", pa.array(bid.tolist(), pa.float64()))
    return first, rest


def _checkpointed(bundle, tmp_path) -> tuple[Forecaster, pa.Table]:
    """A Forecaster after the first half, and its partition as read back from a checkpoint store."""
    first, _ = _ticks()
    fc = Forecaster(bundle)
    fc.step(first)
    store = group_store(str(tmp_path / "ckpt"), "g")
    store.write("ticks", 0, fc.export_partition(0), 300, bundle.model_version, bundle.feature_spec.to_dict())
    loaded = store.latest("ticks", 0)
    assert loaded is not None and loaded.manifest.offset == 300
    return fc, loaded.state


def test_a_restore_continues_every_feature_from_the_checkpointed_previous_mid_and_sign(tmp_path):
    bundle = numpy_bundle(KNOWN_FEATURES)
    assert bundle.shape.previous == ("mid", "sign")
    fc, state = _checkpointed(bundle, tmp_path)
    assert state.column_names[:8] == [*OLD_COLUMNS[:6], "last_mid", "last_sign"]
    mids = state.column("last_mid").to_numpy()
    assert np.isnan(mids).any() and np.isfinite(mids).any()  # rows whose last tick had no mid, and others
    assert set(state.column("last_sign").to_pylist()) <= {-1, 0, 1} and any(state.column("last_sign").to_pylist())
    restored = Forecaster(bundle)
    restored.state.check_rows(state)
    restored.import_partition(0, state)
    rows = fc.state.lookup(0, state.column("instrument").to_pylist())
    np.testing.assert_array_equal(restored.state.previous("mid")[: len(rows)], fc.state.previous("mid")[rows])
    np.testing.assert_array_equal(restored.state.previous("sign")[: len(rows)], fc.state.previous("sign")[rows])
    _, rest = _ticks()
    np.testing.assert_array_equal(restored.step(rest).forecasts, fc.step(rest).forecasts)


def test_without_the_previous_mid_and_sign_a_restore_would_forecast_otherwise(tmp_path):
    """The check above has teeth: the same state with fresh mid and sign columns gives other forecasts."""
    bundle = numpy_bundle(KNOWN_FEATURES)
    fc, state = _checkpointed(bundle, tmp_path)
    n = state.num_rows
    state = state.set_column(state.column_names.index("last_mid"), "last_mid", pa.array(np.full(n, np.nan)))
    state = state.set_column(state.column_names.index("last_sign"), "last_sign", pa.array(np.zeros(n, np.int8)))
    restored = Forecaster(bundle)
    restored.import_partition(0, state)
    _, rest = _ticks()
    assert not np.array_equal(restored.step(rest).forecasts, fc.step(rest).forecasts)


def test_the_five_feature_models_checkpoints_are_exactly_as_before(tmp_path):
    bundle = numpy_bundle(FEATURE_NAMES)
    assert bundle.shape.previous == ()
    _, state = _checkpointed(bundle, tmp_path)
    assert state.column_names == OLD_COLUMNS
    assert not {k for k in state.schema.metadata if not k.startswith(b"tickcast.")} - {b"layers", b"hidden"}


@pytest.mark.parametrize("written, reading", [(KNOWN_FEATURES, FEATURE_NAMES), (FEATURE_NAMES, KNOWN_FEATURES),
                                              (("trade_sign",), ("mid_log_return",))])
def test_a_checkpoint_of_other_previous_values_is_refused(tmp_path, written, reading):
    _, state = _checkpointed(numpy_bundle(written), tmp_path)
    other = Forecaster(numpy_bundle(reading))
    with pytest.raises(ValueError, match="last_"):
        other.state.check_rows(state)
    with pytest.raises(ValueError, match="previous"):
        other.import_partition(0, state)
