"""Reading tick files: generic Parquet/CSV with mappings, and the real vendor layouts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.errors import InputDataError
from operators.validation import TICK_COLUMNS
from pipeline.files.formats import read_ticks
from tests.support.data import real_data_or_skip

T0 = 1_700_000_000_000_000_000


def test_parquet_with_canonical_names_round_trips(tmp_path):
    t = pa.table({"instrument": ["A", "B"], "ts": pa.array([T0, T0 + 1], pa.int64()), "price": [1.0, 2.0],
                  "size": [3.0, 4.0]})
    pq.write_table(t, tmp_path / "t.parquet")
    out = read_ticks(tmp_path / "t.parquet")
    assert out.schema.names == list(TICK_COLUMNS)
    assert out.column("price").to_pylist() == [1.0, 2.0] and out.column("bid").null_count == 2


def test_csv_with_mapping_units_and_scale(tmp_path):
    (tmp_path / "q.csv").write_text("sym,time_ms,last,qty\nX,1700000000000,1674100,5\nX,1700000000001,1674200,6\n")
    out = read_ticks(tmp_path / "q.csv", mapping={"instrument": "sym", "ts": "time_ms", "price": "last",
                                                  "size": "qty"}, ts_unit="ms", price_scale=1e-4)
    assert out.column("ts").to_pylist() == [T0, T0 + 1_000_000]
    np.testing.assert_allclose(out.column("price").to_numpy(), [167.41, 167.42])


def test_iso_timestamps_and_mid_price_from_quotes(tmp_path):
    (tmp_path / "fx.csv").write_text("timestamp,bid,ask\n2013-01-01T22:00:00.295+00:00,86.655,86.728\n")
    out = read_ticks(tmp_path / "fx.csv", mapping={"ts": "timestamp"}, instrument="USDJPY")
    assert out.column("ts").to_pylist() == [1_357_077_600_295_000_000]
    assert out.column("instrument").to_pylist() == ["USDJPY"]
    assert out.column("price").to_pylist()[0] == pytest.approx((86.655 + 86.728) / 2)


def test_arrow_timestamp_columns_are_converted_to_utc_ns(tmp_path):
    ts = pa.array([T0 // 1_000_000], pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"instrument": ["A"], "ts": ts, "price": [1.0]}), tmp_path / "t.parquet")
    assert read_ticks(tmp_path / "t.parquet").column("ts").to_pylist() == [T0]


@pytest.mark.parametrize("kwargs, message", [
    ({"fmt": "xml"}, "unknown format"),
    ({"mapping": {"price": "nope"}}, "no column 'nope'"),
    ({"mapping": {"prize": "px"}}, "unknown column"),
])
def test_user_mistakes_get_clear_errors(tmp_path, kwargs, message):
    pq.write_table(pa.table({"instrument": ["A"], "ts": [T0], "price": [1.0]}), tmp_path / "t.parquet")
    with pytest.raises(InputDataError, match=message):
        read_ticks(tmp_path / "t.parquet", **kwargs)


def test_missing_price_column_says_how_to_map(tmp_path):
    pq.write_table(pa.table({"instrument": ["A"], "ts": [T0], "px": [1.0]}), tmp_path / "t.parquet")
    with pytest.raises(InputDataError, match="--map price="):
        read_ticks(tmp_path / "t.parquet")
    with pytest.raises(InputDataError, match="does not exist"):
        read_ticks(tmp_path / "missing.parquet")


def _sorted(t: pa.Table) -> bool:
    return bool((np.diff(t.column("ts").to_numpy()) >= 0).all())


@pytest.mark.realdata
def test_lean_equity_trades():
    root = real_data_or_skip() / "quantconnect-lean-equity-ticks" / "equity" / "usa" / "tick"
    aig = read_ticks(root / "aig" / "20131007_trade.zip")
    assert aig.num_rows == 25_351 and set(aig.column("instrument").to_pylist()) == {"AIG"}
    # ms after midnight New York (EDT, UTC-4 in October 2013): pre-market starts at 04:00 ET = 08:00 UTC.
    first = aig.column("ts")[0].as_py()
    assert 1_381_132_800_000_000_000 <= first < 1_381_132_800_000_000_000 + 3_600_000_000_000
    assert 40 < aig.column("price")[0].as_py() < 60  # dollars, not x10000
    spy = read_ticks(root / "spy")
    assert spy.num_rows == 250_601 + 451_545 + 439_677 + 460_032 and _sorted(spy)


@pytest.mark.realdata
def test_lean_fx_quotes_use_the_mid_and_venue_time_zones():
    root = real_data_or_skip() / "quantconnect-lean-fx-ticks"
    oanda = read_ticks(root / "forex" / "oanda" / "tick" / "eurusd")
    assert oanda.num_rows == 248_039 and oanda.column("instrument")[0].as_py() == "OANDA:EURUSD"
    fxcm = read_ticks(root / "forex" / "fxcm" / "tick" / "eurusd" / "20140505_quote.zip")
    # FXCM's clock is UTC-5: its first Monday tick is 5 h later in UTC than its time_ms says.
    assert fxcm.column("ts")[0].as_py() >= 1_399_248_000_000_000_000 + 5 * 3_600_000_000_000
    row = fxcm.slice(0, 1).to_pylist()[0]
    assert row["price"] == pytest.approx((row["bid"] + row["ask"]) / 2) and row["size"] is None


@pytest.mark.realdata
def test_lobster_executions_with_the_book():
    root = real_data_or_skip() / "lobster-nasdaq-2012-06-21"
    aapl = read_ticks(root / "LOBSTER_SampleFile_AAPL_2012-06-21_1.zip")
    assert aapl.num_rows == 23_658 + 11_332
    # 09:30 New York (EDT) = 13:30 UTC on 2012-06-21.
    assert aapl.column("ts")[0].as_py() // 1_000_000_000 == 1_340_285_400
    assert aapl.column("bid").null_count < aapl.num_rows and _sorted(aapl)


@pytest.mark.realdata
def test_binance_trades_from_raw_capture():
    root = real_data_or_skip() / "hftbacktest-binance-2024-08-08"
    usdm = read_ticks(root / "usdm" / "btcusdt_20240808.gz")
    assert usdm.num_rows == 21_313 and usdm.column("instrument")[0].as_py() == "usdm:BTCUSDT"
    everything = read_ticks(root)
    assert everything.num_rows == 55_270 and _sorted(everything)
    assert len(set(everything.column("instrument").to_pylist())) == 6


@pytest.mark.realdata
def test_nautilus_samples():
    root = real_data_or_skip() / "nautilus-samples"
    btc = read_ticks(root / "binance-btcusdt-trades.parquet")
    assert btc.num_rows == 2001 and btc.column("ts")[0].as_py() == 1_610_064_000_278_000_000
    eur = read_ticks(root / "histdata-eurusd-quotes.csv")
    # 2020-01-01 17:00:00.065 EST (fixed UTC-5) = 22:00:00.065 UTC
    assert eur.num_rows == 9500 and eur.column("ts")[0].as_py() == 1_577_916_000_065_000_000
