"""Candidate models in the real live loop (``Runner.run`` on the in-memory Kafka fakes): every batch steps the
primary and each candidate over the same ticks; the candidates' forecasts go to the shadow topic in the same
outbox (one transaction, exactly-once); checkpoints hold every model's state; a restart with the model and a
candidate swapped (promotion) continues the new primary exactly where its shadow left off."""

from __future__ import annotations

import json
import logging

import pytest
from kafka.errors import KafkaTimeoutError

from operators.forecaster import Forecaster
from pipeline.checkpoint import group_store
from pipeline.wire.forecasts import decode_forecast_message
from pipeline.wire.ticks import decode_batch
from tests.support.live_loop import (TP0, TP1, all_committed, assert_same_forecasts, feed, forecasts, make_runner,
                                     new_broker, run_until, sample)

SHADOW = "forecasts.shadow"


def stepped_once(bundle, broker, since: dict[int, int] | None = None) -> dict[tuple[int, int], float]:
    """Forecasts of a separate Forecaster of ``bundle`` stepped once over each partition's ticks in offset
    order, from offset ``since[p]`` (0: the start), by source (partition, offset)."""
    out = {}
    for p in range(2):
        recs = [r for r in broker.topics["ticks"][p] if r.offset >= (since or {}).get(p, 0)]
        decoded = decode_batch([r.key for r in recs], [r.value for r in recs], [r.timestamp for r in recs])
        idx = decoded.ticks.column("index").to_numpy()
        res = Forecaster(bundle).step(decoded.ticks)
        for row, value in zip(res.rows.tolist(), res.forecasts.tolist()):
            out[(p, recs[idx[row]].offset)] = value
    return out


def versions(broker, topic: str) -> set[str]:
    return {json.loads(r.value)["model_version"] for r in broker.records(topic)}


def test_a_candidate_leaves_the_primary_topic_byte_identical_and_publishes_its_own_forecasts_in_shadow(
        bundle, bundle2):
    alone = new_broker()
    feed(alone)
    runner, _ = make_runner(bundle, alone, max_batch_ticks=10_000)
    assert run_until(runner, all_committed(alone)) == 0

    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker, candidates=(bundle2,), max_batch_ticks=10_000)
    assert run_until(runner, all_committed(broker)) == 0
    assert [(r.key, r.value, r.headers) for r in broker.records("forecasts")] == \
        [(r.key, r.value, r.headers) for r in alone.records("forecasts")], "the primary's topic is untouched"
    assert versions(broker, "forecasts") == {bundle.model_version}
    assert versions(broker, SHADOW) == {bundle2.model_version}, "never the primary's topic, and its own version"
    assert_same_forecasts(bundle2, forecasts(broker, SHADOW), stepped_once(bundle2, broker))
    assert alone.records(SHADOW) == []
    assert sample(runner, "tickcast_models_info", model_version=bundle2.model_version, role="candidate",
                  horizon_ticks=str(bundle2.horizon)) == 1


def test_output_mode_last_per_instrument_selects_the_candidates_forecasts_the_same_way(bundle, bundle2):
    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker, candidates=(bundle2,), output_mode="last_per_instrument",
                            max_batch_ticks=10_000)
    assert run_until(runner, all_committed(broker)) == 0
    assert set(forecasts(broker, SHADOW)) == set(forecasts(broker)), "the same ticks of each batch"
    assert len(forecasts(broker)) < 400


def test_exactly_once_puts_the_shadow_forecasts_in_the_primarys_transaction(bundle, bundle2, tmp_path):
    """Every committed transaction holds the batch's primary and shadow forecasts and its offsets; an aborted
    one publishes neither, and after the rewind each topic holds each forecast once, the reference's."""
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, candidates=(bundle2,), processing="exactly_once",
                               checkpoint_uri=str(tmp_path), max_batch_ticks=150)
    committed = []

    def watch(producer):
        if not fake.producers:
            producer.fail_commits.extend([None, KafkaTimeoutError("no answer")])
        commit = producer.commit_transaction

        def recording():
            sent = [out[0] for out in producer._tx or []]
            offsets = dict(producer._tx_offsets)
            commit()  # raises when it fails: nothing recorded
            committed.append((sent.count("forecasts"), sent.count(SHADOW), offsets))

        producer.commit_transaction = recording

    fake.on_producer = watch
    assert run_until(runner, all_committed(broker)) == 0
    assert sample(runner, "tickcast_transactions_total", result="aborted") == 1
    loud = [c for c in committed if c[0] or c[1]]
    assert len(loud) >= 3
    for n_primary, n_shadow, offsets in loud:
        assert n_primary == n_shadow > 0 and offsets, "primary, shadow and offsets in one transaction"
    assert_same_forecasts(bundle, forecasts(broker), stepped_once(bundle, broker))
    assert_same_forecasts(bundle2, forecasts(broker, SHADOW), stepped_once(bundle2, broker))


def test_at_least_once_commits_only_after_the_shadow_forecasts_are_acknowledged(bundle, bundle2):
    broker = new_broker()
    feed(broker)
    runner, fake = make_runner(bundle, broker, candidates=(bundle2,), max_batch_ticks=150)
    at_commit = []
    fake.on_consumer = lambda c: setattr(c, "before_commit", lambda offsets: at_commit.append(
        (sum(o.offset for o in offsets.values()), len(broker.records(SHADOW)),
         all(f.is_done and not f.failed() for f in fake.producers[-1].futures))))
    assert run_until(runner, all_committed(broker)) == 0
    assert at_commit
    for covered, n_shadow, acknowledged in at_commit:
        assert n_shadow >= covered and acknowledged


def test_a_checkpoint_holds_every_models_state_at_one_offset(bundle, bundle2, tmp_path):
    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path))
    assert run_until(runner, all_committed(broker)) == 0  # the shutdown checkpoint
    store = group_store(str(tmp_path), "g")
    for p in range(2):
        loaded = store.latest("ticks", p)
        assert loaded.manifest.offset == broker.end(TopicPartitionOf(p))
        assert [m.model_version for m in loaded.manifest.models] == [bundle.model_version, bundle2.model_version]
        for b in (bundle, bundle2):
            recs = broker.topics["ticks"][p]
            fc = Forecaster(b)
            fc.step(decode_batch([r.key for r in recs], [r.value for r in recs], [r.timestamp for r in recs]).ticks)
            want = fc.export_partition(0).sort_by("instrument")
            got = loaded.states[b.model_version].sort_by("instrument")
            assert got.column("tick_count").equals(want.column("tick_count"))
            assert got.column("h0").combine_chunks().flatten().to_numpy() == \
                pytest.approx(want.column("h0").combine_chunks().flatten().to_numpy(), abs=1e-6)


def TopicPartitionOf(p: int):
    return TP0 if p == 0 else TP1


def test_promotion_continues_the_new_primary_exactly_where_its_shadow_left_off(bundle, bundle2, tmp_path, caplog):
    broker = new_broker()
    feed(broker)
    first, _ = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path))
    assert run_until(first, all_committed(broker)) == 0
    shadow_before = forecasts(broker, SHADOW)
    primary_before = len(broker.records("forecasts"))
    feed(broker, 400, start=400)
    # promoted: the candidate is the model, the old primary stays as a candidate (a rollback is the swap back)
    second, _ = make_runner(bundle2, broker, candidates=(bundle,), checkpoint_uri=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="tickcast.run"):
        assert run_until(second, all_committed(broker)) == 0
    assert sample(second, "tickcast_partition_restores_total", source="checkpoint") == 2
    assert sample(second, "tickcast_replayed_ticks_total") == 0, "no replay: its own state was in the checkpoint"
    assert "starts empty" not in caplog.text
    after = {k: v for k, v in forecasts(broker).items() if k not in forecasts_of(broker, primary_before)}
    assert versions_after(broker, "forecasts", primary_before) == {bundle2.model_version}
    assert not set(after) & set(shadow_before), "each tick forecast once by the model, in shadow or as primary"
    # shadow then primary: one sequence, equal to the candidate stepped once over all 800 ticks
    assert_same_forecasts(bundle2, {**shadow_before, **after}, stepped_once(bundle2, broker))
    # and the old primary, now in shadow, continues its own sequence
    shadow_after = {k: v for k, v in forecasts(broker, SHADOW).items() if k not in shadow_before}
    expected = stepped_once(bundle, broker)
    assert_same_forecasts(bundle, shadow_after, {k: expected[k] for k in shadow_after})
    assert set(shadow_after) == set(after)


def forecasts_of(broker, first_n: int) -> set:
    return {(json.loads(r.value)["partition"], json.loads(r.value)["offset"])
            for r in broker.records("forecasts")[:first_n]}


def versions_after(broker, topic: str, first_n: int) -> set[str]:
    return {json.loads(r.value)["model_version"] for r in broker.records(topic)[first_n:]}


def test_a_model_dropped_from_the_config_leaves_the_next_checkpoint(bundle, bundle2, tmp_path):
    broker = new_broker()
    feed(broker)
    first, _ = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path))
    assert run_until(first, all_committed(broker)) == 0
    feed(broker, 100, start=400)
    second, _ = make_runner(bundle, broker, checkpoint_uri=str(tmp_path))
    assert run_until(second, all_committed(broker)) == 0
    store = group_store(str(tmp_path), "g")
    for p in range(2):
        assert list(store.latest("ticks", p).states) == [bundle.model_version]
    assert len(second.models) == 1


def test_a_candidate_the_checkpoint_does_not_hold_starts_empty_and_says_so(bundle, bundle2, tmp_path, caplog):
    broker = new_broker()
    feed(broker)
    first, _ = make_runner(bundle, broker, checkpoint_uri=str(tmp_path))
    assert run_until(first, all_committed(broker)) == 0
    resume = {p: broker.end(TopicPartitionOf(p)) for p in range(2)}
    feed(broker, 400, start=400)
    second, _ = make_runner(bundle, broker, candidates=(bundle2,), checkpoint_uri=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="tickcast.run"):
        assert run_until(second, all_committed(broker)) == 0
    for tp in (TP0, TP1):
        assert f"candidate {bundle2.model_version} has no state for {tp.topic}/{tp.partition}: starts empty" \
            in caplog.text
    # empty at the resume offset: the candidate's forecasts are those of a Forecaster started there
    assert_same_forecasts(bundle2, forecasts(broker, SHADOW), stepped_once(bundle2, broker, since=resume))
    assert_same_forecasts(bundle, forecasts(broker), stepped_once(bundle, broker))  # the primary is warm


def test_a_revoke_drops_the_partitions_state_in_every_model(bundle, bundle2):
    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker, candidates=(bundle2,))
    pid1 = runner.partitions.part_id("ticks", 1)
    revoked = []

    def revoked_after_first_batches():
        if not revoked:
            if not all_committed(broker)():
                return False
            broker.revoke(TP1)
            feed(broker, 200, start=400)
            revoked.append(True)
        return TP1 not in runner.partitions.assigned and broker.committed.get(TP0) == broker.end(TP0)

    assert run_until(runner, revoked_after_first_batches) == 0
    for model in runner.models.all:
        state = model.forecaster.state
        held = set(state.column("partition")[: len(state)].tolist())
        assert pid1 not in held and 0 in held, model.role
    assert all(p != pid1 for p, _ in runner.models.comparison._online._keys)


def test_every_model_is_scored_on_the_same_realised_outcomes_as_the_primarys_online_scorer(bundle, bundle2):
    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker, candidates=(bundle2,))
    assert run_until(runner, all_committed(broker)) == 0
    runner.models.publish()  # on the status interval in a run
    scored = sample(runner, "tickcast_forecasts_scored_total")
    assert scored > 0
    for model in runner.models.all:
        assert sample(runner, "tickcast_model_forecasts_scored_total", model_version=model.version,
                      role=model.role) == scored
        assert sample(runner, "tickcast_model_score", model_version=model.version, role=model.role,
                      metric="mae") > 0
    assert sample(runner, "tickcast_model_paired_forecasts") == scored


def test_arrow_output_encodes_the_shadow_forecasts_the_same_way_with_the_candidates_version(bundle, bundle2):
    broker = new_broker()
    feed(broker)
    runner, _ = make_runner(bundle, broker, candidates=(bundle2,), output_format="arrow")
    assert run_until(runner, all_committed(broker)) == 0
    got = {}
    for topic, b in (("forecasts", bundle), (SHADOW, bundle2)):
        tables = [decode_forecast_message(r.value) for r in broker.records(topic)]
        assert {t.schema.metadata[b"model_version"].decode() for t in tables} == {b.model_version}
        got[topic] = {(p, o): f for t in tables for p, o, f in zip(t.column("partition").to_pylist(),
                                                                      t.column("offset").to_pylist(),
                                                                      t.column("forecast").to_pylist())}
    assert_same_forecasts(bundle, got["forecasts"], stepped_once(bundle, broker))
    assert_same_forecasts(bundle2, got[SHADOW], stepped_once(bundle2, broker))
