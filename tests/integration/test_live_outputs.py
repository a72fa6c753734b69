"""`tickcast run` with a model that gives several outputs per tick publishes schema-v2 messages whose every
output equals the file backtest's forecast for that tick."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.evaluation.backtest import run_backtest
from pipeline.wire.forecasts import decode_forecast_message
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import in_target_units
from tests.support.live import RunProcess, produce, tick_messages
from tests.support.readers import read_all


@pytest.mark.parametrize("output_format", ["json", "arrow"])
def test_run_publishes_v2_messages_equal_to_the_file_backtests_forecasts(kafka_bootstrap, multi_bundle, tmp_path,
                                                                        output_format):
    from pipeline.kafka.broker import create_topics

    names = [o.name for o in multi_bundle.output_list]
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq, group = f"mo-in-{u}", f"mo-out-{u}", f"mo-dlq-{u}", f"mo-g-{u}"
    create_topics(kafka_bootstrap, {tin: 1, tout: 1, dlq: 1})
    n = 1500
    ticks = generate_ticks(8, n, seed=4, bad_fraction=0.0)
    run = RunProcess.start(kafka_bootstrap, str(multi_bundle.path), tin, tout, dlq, group, "--max-batch-ticks", "64",
                           "--output-format", output_format)
    arrow = output_format == "arrow"
    try:
        produce(kafka_bootstrap, tin, tick_messages(ticks), partition=0)
        got = read_all(kafka_bootstrap, tout, 1, expected=n,
                       weight=(lambda m: decode_forecast_message(m.value()).num_rows) if arrow else None)
    finally:
        assert run.stop() == 0
    result = run_backtest(ticks, multi_bundle, tmp_path / "bt", plots=False, progress=False)
    table = pq.read_table(result.out_dir / "forecasts.parquet")
    want = np.column_stack([table.column(f"forecast_{k}").to_numpy() for k in names])
    by_row = dict(zip(table.column("seq").to_pylist(), want))
    if arrow:  # a row per forecast, a column per output: as the JSON bodies, for the checks below
        tables = [decode_forecast_message(m.value()) for m in got]
        assert all(t.schema.metadata[b"v"] == b"2" and json.loads(t.schema.metadata[b"outputs"])
                   == [o.to_dict() for o in multi_bundle.output_list] for t in tables)
        bodies = [{"v": 2, "model_version": t.schema.metadata[b"model_version"].decode(), "ts": row["ts"],
                   "offset": row["offset"], "forecasts": {k: row[f"forecast_{k}"] for k in names}}
                  for t in tables for row in t.to_pylist()]
    else:
        bodies = [json.loads(m.value()) for m in got]
    assert sorted(b["offset"] for b in bodies) == list(range(n))  # one input partition: offset = row
    for b in bodies:
        assert b["v"] == 2 and b["model_version"] == multi_bundle.model_version and list(b["forecasts"]) == names
        assert b["ts"] == ticks.column("ts")[b["offset"]].as_py()
    live = np.array([[b["forecasts"][k] for k in names] for b in bodies])
    file = np.array([by_row[b["offset"]] for b in bodies])
    np.testing.assert_allclose(in_target_units(multi_bundle, live), in_target_units(multi_bundle, file),
                               rtol=1e-5, atol=1e-5)
