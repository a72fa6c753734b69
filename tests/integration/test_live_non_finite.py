"""`tickcast run` against the embedded broker with a model whose outputs are not all finite (a bundle on
disk, saved and loaded as a user's would be): no message on the output topic holds NaN or an infinity,
every input tick comes out as a forecast or as a `non_finite_forecast` dead letter, and the checkpoints
the run writes are all usable."""

from __future__ import annotations

import json
import math
import uuid

import pytest

from operators.bundle import load_bundle, save_bundle
from pipeline.checkpoint import CheckpointStore
from pipeline.files.synthetic import generate_ticks
from tests.support.bundles import variant
from tests.support.live import RunProcess, produce, tick_messages
from tests.support.readers import read_all
from tests.unit.operators.test_forecaster_non_finite import _threshold


def _strict(value: bytes):
    def refuse(name):
        raise AssertionError(f"a published message holds {name}: {value[:200]!r}")
    return json.loads(value, parse_constant=refuse)


@pytest.mark.parametrize("model", ["nan_weights", "exploding_head"])
def test_run_never_publishes_a_non_finite_forecast_and_accounts_for_every_tick(kafka_bootstrap, bundle, tmp_path,
                                                                              model):
    from pipeline.kafka.broker import create_topics

    n = 600
    ticks = generate_ticks(5, n, seed=11, bad_fraction=0.0)
    if model == "nan_weights":
        broken = variant(bundle, nan_weights=True)
    else:
        broken = variant(bundle, overflow_above=_threshold(bundle, ticks))
    path = save_bundle(broken, tmp_path / "bundle")
    assert load_bundle(path).model_version == broken.model_version  # it bundles and loads fine
    u = uuid.uuid4().hex[:8]
    tin, tout, dlq, group = f"nf-in-{u}", f"nf-out-{u}", f"nf-dlq-{u}", f"nf-g-{u}"
    create_topics(kafka_bootstrap, {tin: 1, tout: 1, dlq: 1})
    store = tmp_path / "ckpt"
    run = RunProcess.start(kafka_bootstrap, str(path), tin, tout, dlq, group, "--max-batch-ticks", "64",
                           "--checkpoint-uri", str(store), "--checkpoint-every-batches", "1")
    try:
        produce(kafka_bootstrap, tin, tick_messages(ticks), partition=0)
        out = read_all(kafka_bootstrap, tout, 1, timeout=8)
        dead = read_all(kafka_bootstrap, dlq, 1, expected=n - len(out), timeout=60)
        out = read_all(kafka_bootstrap, tout, 1, timeout=5)
    finally:
        assert run.stop() == 0
    bodies = [_strict(m.value()) for m in out]
    assert all(math.isfinite(b["forecast"]) for b in bodies)
    reasons = [dict(m.headers())["tickcast.reason"].decode() for m in dead]
    assert set(reasons) == {"non_finite_forecast"}
    forecast_offsets = {b["offset"] for b in bodies}
    dead_offsets = {int(dict(m.headers())["tickcast.source"].decode().rsplit("/", 1)[1]) for m in dead}
    assert not forecast_offsets & dead_offsets
    assert forecast_offsets | dead_offsets == set(range(n)), "every tick: a forecast or a dead letter"
    if model == "nan_weights":
        assert not bodies
    else:
        assert bodies and dead
    inventory = CheckpointStore(str(store / group)).inventory()
    assert inventory and all(problem is None for _, _, problem in inventory), inventory
