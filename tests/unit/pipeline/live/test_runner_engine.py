"""`tickcast run` picks the engine from its config and logs the choice in one line."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from operators.errors import BundleError
from pipeline.config import RunConfig
from pipeline.live.runner import Runner
from pipeline.metrics import Metrics
from tests.support.fake_kafka import FakeBroker, FakeKafka
from tests.support.keras_models import build, bundled


def _runner(bundle, **flags) -> Runner:
    cfg = RunConfig.load(env={}, flags={"model": "m", "group_id": "g", "checkpoint_uri": "", "status_interval_s": 0,
                                        **flags})
    broker = FakeBroker({"ticks": 1, "forecasts": 1, "ticks.dlq": 1})
    return Runner(cfg, bundle, Metrics(CollectorRegistry()), kafka_clients=FakeKafka(broker))


def test_run_logs_the_engine_auto_picked_and_honours_the_engine_key(bundle, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="tickcast.run"):
        _runner(bundle)
    assert "engine: kernel (auto: the NumPy kernel computes every layer of the model)" in caplog.messages
    batchnorm, _ = bundled(build("rnn_batchnorm", seed=4), tmp_path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tickcast.run"):
        runner = _runner(batchnorm)
    assert runner.forecaster.engine.engine == "keras"
    assert any(m.startswith("engine: keras (auto: the NumPy kernel cannot; layer bn (BatchNormalization)")
               for m in caplog.messages)
    assert _runner(bundle, engine="keras").forecaster.engine.engine == "keras"
    with pytest.raises(BundleError, match=r'^engine = "kernel" cannot serve this model: layer bn'):
        _runner(batchnorm, engine="kernel")
