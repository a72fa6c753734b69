"""The config space: whatever `tickcast config check` accepts, the run can start with and process a batch;
whatever it refuses, it refuses with one line per problem (`tickcast: error: ...`, exit 2), never a traceback.

Values are drawn at and around every range's bounds, plus NaN, infinities, values past Kafka's 32-bit
fields and durations that truncate or overflow. An accepted config then runs the real loop against the
in-memory Kafka fakes until a batch is committed, hands the options the runner gave its clients to the real
kafka-python constructors and request encoders (which is where a 32-bit overflow or an inconsistent
timeout set breaks), and checks the run's clocks: a shutdown that has waited `shutdown_timeout_s` is past
its deadline, a checkpoint is due once `checkpoint_interval_s` has passed.

Candidate models and the shadow topic are drawn too: candidates of another model, of a copy of the primary's
bundle (the same model version: `config check` says the run cannot start, exit 1, and the start refuses it
in one line), of the primary's own directory under another spelling, without a model, with an unknown key;
shadow topics equal to the run's other topics or not a topic name. An accepted config's candidates load.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer
from kafka.protocol.consumer import FetchRequest, JoinGroupRequest
from kafka.protocol.producer import InitProducerIdRequest
from prometheus_client import CollectorRegistry

from pipeline.candidates import load_candidates
from pipeline.cli import main
from pipeline.config import ConfigError, RunConfig
from pipeline.live.runner import Runner
from pipeline.metrics import Metrics
from pipeline.ranges import RANGES
from tests.support.fake_kafka import FakeKafka
from tests.support.live_loop import all_committed, feed, new_broker, run_until

DURATIONS = [k for k, r in RANGES.items() if r.unit == "duration"]
NUMBERS = [k for k, r in RANGES.items() if r.unit != "duration"]
INT_KEYS = {f for f, t in RunConfig.__annotations__.items() if t == "int"}


def numeric(key: str) -> st.SearchStrategy:
    r = RANGES[key]
    edges = [r.lo, r.hi, r.lo - 1, r.hi + 1, r.hi * 2, 0, -1, 1e11, 2**31, 2**63]
    if key in INT_KEYS:
        inside = st.integers(int(r.lo), int(r.hi))
        return st.one_of(inside, st.sampled_from([int(e) for e in edges]), st.sampled_from([1e11, 2.5]))
    return st.one_of(st.floats(r.lo, r.hi), st.sampled_from(edges),
                     st.sampled_from([math.nan, math.inf, -math.inf, 1e300]))


DURATION_TEXT = st.one_of(
    st.sampled_from(["0.5ns", "1ns", "999us", "1ms", "1.5ns", "100000d", "200000d", "3650d", "3651d", "1s",
                     "0s", "2m", "30m", "1d", "1e3s", "nan s", "-1s"]),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**7), st.sampled_from(["ns", "us", "ms", "s", "m", "h", "d"])),
)


def toml_value(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, int):
        return str(v)
    return json.dumps(v)


@st.composite
def configs(draw) -> dict:
    chosen = draw(st.sets(st.sampled_from(NUMBERS + DURATIONS), max_size=6))
    out = {}
    for key in sorted(chosen):
        out[key] = draw(DURATION_TEXT if key in DURATIONS else numeric(key))
    out["processing"] = draw(st.sampled_from(["at_least_once", "exactly_once"]))
    out["candidates"] = draw(st.lists(st.sampled_from(list(CANDIDATES)), max_size=3))
    shadow = draw(st.sampled_from([None, "ticks", "forecasts", "ticks.dlq", "forecasts.shadow", "shadows",
                                   "a b", "x" * 250]))
    if shadow is not None:
        out["shadow_topic"] = shadow
    return out


# A candidate table per kind: ``{dir}`` is the example's folder, where m is the primary's bundle (the fixture's,
# linked), other another model's (linked) and copy a copy of the primary's (the same model version).
CANDIDATES = {
    "other": 'model = "{dir}/other"',
    "copy": 'model = "{dir}/copy"',
    "primary": 'model = "{dir}/m"',
    "primary_spelt_otherwise": 'model = "{dir}/./m/"',
    "no_model": 'model = ""',
    "unknown_key": 'model = "{dir}/other"\nweight = 1',
}


def config_check(values: dict, folder: Path, bundle, other) -> tuple[int, str, str, Path]:
    os.symlink(bundle.path, folder / "m")
    os.symlink(other.path, folder / "other")
    shutil.copytree(bundle.path, folder / "copy")
    path = folder / "tickcast.toml"
    path.write_text(f'model = "{folder / "m"}"\ngroup_id = "g"\nmetrics_address = "127.0.0.1:0"\n'
                    f'checkpoint_uri = {json.dumps(str(folder / "ckpt"))}\n'
                    + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items() if k != "candidates")
                    + "".join(f"[[candidates]]\n{CANDIDATES[kind].format(dir=folder)}\n"
                              for kind in values.get("candidates", ())))
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["config", "check", str(path), "--ignore-env"])
    return code, err.getvalue(), out.getvalue(), path


class RecordingKafka(FakeKafka):
    """The fakes, keeping the options the runner gave each client (to hand them to the real ones)."""

    def __init__(self, broker):
        super().__init__(broker)
        self.options: dict[str, dict] = {}

    def consumer(self, **config):
        if config.get("group_id"):  # the run's group consumer (a warm-up's reader is another)
            self.options["consumer"] = config
        return super().consumer(**config)

    def producer(self, **config):
        self.options["producer"] = config
        return super().producer(**config)


def real_clients_take(options: dict[str, dict]) -> None:
    """kafka-python's constructors accept the options, and the requests they carry encode on the wire."""
    c, p = dict(options["consumer"]), dict(options["producer"])
    consumer = KafkaConsumer(**{**c, "bootstrap_servers": ["127.0.0.1:1"], "api_version": (2, 5)})
    consumer.close()
    producer = KafkaProducer(**{**p, "bootstrap_servers": ["127.0.0.1:1"], "api_version": (2, 5)})
    producer.close(timeout=0)
    FetchRequest(replica_id=-1, max_wait_ms=c["fetch_max_wait_ms"], min_bytes=1, max_bytes=c["fetch_max_bytes"],
                 isolation_level=0, topics=[], version=4).encode()
    JoinGroupRequest(group_id="g", session_timeout_ms=c["session_timeout_ms"], rebalance_timeout_ms=300000,
                     member_id="", protocol_type="consumer", protocols=[], version=1).encode()
    if "transaction_timeout_ms" in p:
        InitProducerIdRequest(transactional_id="t", transaction_timeout_ms=p["transaction_timeout_ms"],
                              version=0).encode()


# What issue 21 (item 8) found `config check` accepting on 7b28c1f, each of which broke the run.
FOUND = [
    {"max_ts_ahead": "100000d"},  # overflowed int64: every tick refused ts_ahead
    {"max_ts_ahead": "200000d"},  # OverflowError on the first batch
    {"reset_gap": "0.5ns"},  # truncated to 0: a traceback
    {"shutdown_timeout_s": math.nan},  # shutdown never gives up
    {"checkpoint_interval_s": math.nan},  # never checkpoints
    {"fetch_max_bytes": 100_000_000_000},  # past Kafka's int32: nothing is ever consumed
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=configs())
@example(values={"processing": "at_least_once", "candidates": ["other"], "shadow_topic": "shadows"})
@example(values={"processing": "at_least_once", "candidates": ["copy"]})
# a warm-up's rewind reads offsets by time (the fakes lacked offsets_for_times, and the rewind retried for ever)
@example(values={"expire_after": "1d", "max_batch_ms": 4202, "max_batch_ticks": 1, "warmup": "65537s",
                 "processing": "at_least_once"})
def test_what_config_check_accepts_runs_and_what_it_refuses_is_one_line_each(bundle, bundle2, values):
    accepted_config_runs(bundle, bundle2, values)


@pytest.mark.parametrize("values", FOUND, ids=lambda v: ",".join(f"{k}={v}" for k, v in v.items()))
def test_the_values_that_broke_the_run_are_refused_or_run(bundle, bundle2, values):
    accepted_config_runs(bundle, bundle2, values)


def accepted_config_runs(bundle, other, values: dict) -> None:
    """Refused in one line per problem, or accepted and then the run works (see the module docstring)."""
    with tempfile.TemporaryDirectory() as d:
        code, err, out, path = config_check(values, Path(d), bundle, other)
        if code == 1:  # valid values, but the bundles found hold one model version twice
            assert "models: NOT startable: " in out and err == "", out
            cfg = RunConfig.load(path, env={})
            with pytest.raises(ConfigError, match="each model runs once") as refused:
                load_candidates(bundle, [c.model for c in cfg.candidates])
            assert "\n" not in str(refused.value)
            return
        if code != 0:
            lines = err.splitlines()
            assert code == 2 and lines, err
            assert all(line.startswith("tickcast: error: ") for line in lines), err
            assert "Traceback" not in err and len(lines) <= len(values) + len(values.get("candidates", ())) + 1, err
            return
        cfg = RunConfig.load(path, env={})
        loaded = load_candidates(bundle, [c.model for c in cfg.candidates])  # the start's check of them passes
        assert [c.model_version for c in loaded] == [other.model_version] * len(values.get("candidates", ()))
        if cfg.candidates or cfg.shadow_topic:
            assert cfg.shadow_output_topic not in {*cfg.input_topics, cfg.output_topic, cfg.dead_letter_topic}
        broker = new_broker()
        feed(broker, 200)
        fake = RecordingKafka(broker)
        runner = Runner(cfg, bundle, Metrics(CollectorRegistry()), kafka_clients=fake)
        assert run_until(runner, all_committed(broker), timeout_s=60) == 0
        # Valid ticks: a dead letter only where max_instruments says so.
        dead = [dict(r.headers or []).get("tickcast.reason") for r in broker.records("ticks.dlq")]
        assert all(reason == b"instrument_limit" for reason in dead), dead[:3]
        real_clients_take(fake.options)
        # The run's clocks: the shutdown deadline passes, a periodic checkpoint comes due.
        runner.stopping.requested_at = time.monotonic() - cfg.shutdown_timeout_s - 1
        assert runner.stopping.past_deadline(), cfg.shutdown_timeout_s
        if cfg.checkpoint_interval_s:
            runner.checkpointer.last_checkpoint = time.monotonic() - cfg.checkpoint_interval_s - 1
            assert runner.checkpointer.due(), cfg.checkpoint_interval_s
