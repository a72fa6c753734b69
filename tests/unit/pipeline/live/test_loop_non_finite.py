"""The live loop with a model whose outputs are not all finite (fakes for Kafka): no published message
holds NaN or an infinity, every tick is accounted for (a forecast or a dead letter), the metric and the
online score stay sane, and every checkpoint written can be restored."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline.checkpoint import CheckpointStore
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import variant
from tests.support.live_loop import all_committed, feed, make_runner, new_broker, run_until, sample
from tests.unit.operators.test_forecaster_non_finite import _threshold

N = 400


def _strict(value: bytes):
    """JSON as RFC 8259 has it: NaN, Infinity and -Infinity are not numbers."""
    def refuse(name):
        raise AssertionError(f"a published message holds {name}: {value[:200]!r}")
    return json.loads(value, parse_constant=refuse)


@pytest.fixture(params=["nan_weights", "exploding_head"])
def broken(request, bundle):
    if request.param == "nan_weights":
        return variant(bundle, nan_weights=True)
    threshold = _threshold(bundle, generate_ticks(6, 1000, seed=5, bad_fraction=0.0).slice(0, N))
    assert threshold is not None
    return variant(bundle, overflow_above=threshold)


@pytest.mark.parametrize("output_format", ["json", "arrow"])
def test_non_finite_forecasts_go_to_the_dead_letter_topic_never_to_the_output(broken, tmp_path, output_format):
    from pipeline.wire.forecasts import decode_forecast_message

    broker = new_broker()
    feed(broker, N)
    store_dir = tmp_path / "ckpt"
    runner, _ = make_runner(broken, broker, checkpoint_uri=str(store_dir), checkpoint_every_batches=1,
                            max_batch_ticks=37, output_format=output_format)
    assert run_until(runner, all_committed(broker)) == 0
    published = {}
    for r in broker.records("forecasts"):
        if output_format == "json":
            m = _strict(r.value)
            published[(m["partition"], m["offset"])] = m["forecast"]
        else:
            for row in decode_forecast_message(r.value).to_pylist():
                published[(row["partition"], row["offset"])] = row["forecast"]
    assert all(math.isfinite(f) for f in published.values())
    dead = {}
    for r in broker.records("ticks.dlq"):
        headers = dict(r.headers)
        topic, part, off = headers["tickcast.source"].decode().rsplit("/", 2)
        dead[(int(part), int(off))] = headers["tickcast.reason"].decode()
    assert set(dead.values()) == {"non_finite_forecast"}
    assert not published.keys() & dead.keys()
    assert len(published) + len(dead) == N, "every tick: a forecast or a dead letter"
    assert len(dead) > 0
    assert sample(runner, "tickcast_dead_letters_total", reason="non_finite_forecast") == len(dead)
    assert sample(runner, "tickcast_non_finite_state_resets_total") >= len(dead)
    # The online score never sees a refused tick: what it holds and sums is finite (the exploding head's
    # finite forecasts reach 1e308, so its error sum may overflow: only the NaN model's sum is checked).
    assert np.isfinite(runner.scorer._forecast).all()
    if len(published) == 0:
        assert sample(runner, "tickcast_forecast_abs_error_total") == 0.0
    # Every checkpoint written is one restore takes.
    inventory = CheckpointStore(str(store_dir / "g")).inventory()
    assert inventory and all(problem is None for _, _, problem in inventory), inventory
    assert sample(runner, "tickcast_checkpoint_writes_total", result="failed") in (None, 0.0)
