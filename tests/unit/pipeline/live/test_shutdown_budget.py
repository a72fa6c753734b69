"""The shutdown budget against the in-memory fakes: the steps' deadlines end at shutdown_timeout_s, a broker
call during the flush is cut to the flush's deadline, a consumer whose close never returns and a store whose
write never returns are abandoned at their deadlines, and the checkpoint before the stall stays valid.
(tests/integration/test_shutdown.py does the same to a `tickcast run` process, a real broker and S3.)"""

from __future__ import annotations

import threading
import time

import pyarrow.fs as pafs
import pytest

from pipeline.checkpoint import CheckpointStore
from pipeline.live.stopping import SHUTDOWN_STEPS, Stopping
from tests.support.live_loop import TP0, all_committed, feed, make_runner, new_broker

TIMEOUT_S = 2.0
MARGIN_S = 1.5


def test_the_steps_deadlines_end_at_the_shutdown_timeout_in_order():
    stopping = Stopping(20.0)
    stopping.request()
    ends = [stopping.deadline(step) - stopping.requested_at for step, _ in SHUTDOWN_STEPS]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(20.0)
    assert [s for s, _ in SHUTDOWN_STEPS] == ["drain", "checkpoint", "close"]
    assert stopping.cap_s(30.0) <= 10.0 + 1e-6  # a broker call during the flush ends with the flush
    assert Stopping(20.0).cap_s(30.0) == 30.0  # no stop requested: calls keep their own limits


class StalledFS(pafs.FileSystemHandler):
    """A local directory whose writes block while ``stalled`` is set (a store that stopped answering)."""

    def __init__(self, root: str):
        self.fs = pafs.SubTreeFileSystem(root, pafs.LocalFileSystem())
        self.stalled = threading.Event()
        self.released = threading.Event()

    def _gate(self):
        if self.stalled.is_set():
            self.released.wait(120)

    def get_type_name(self):
        return "stalled"

    def equals(self, other):
        return self is other

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._gate()
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self._gate()
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._gate()
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        self._gate()
        return self.fs.open_append_stream(path, metadata=metadata)

    def normalize_path(self, path):
        return path


def run_in_thread(runner) -> tuple[threading.Thread, list]:
    code: list = []
    thread = threading.Thread(target=lambda: code.append(runner.run()), daemon=True)
    thread.start()
    return thread, code


def wait(cond, timeout=60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def test_a_store_that_stops_answering_is_abandoned_at_the_checkpoint_deadline(bundle, tmp_path):
    handler = StalledFS(str(tmp_path))
    store = CheckpointStore("ckpt", filesystem=pafs.PyFileSystem(handler))
    broker = new_broker()
    feed(broker, 200)
    runner, _ = make_runner(bundle, broker, store=store, shutdown_timeout_s=TIMEOUT_S, checkpoint_every_batches=1,
                            checkpoint_interval_s=0, max_batch_ticks=50, checkpoint_uri=str(tmp_path / "unused"))
    thread, code = run_in_thread(runner)
    try:
        wait(all_committed(broker))
        wait(lambda: runner.stats.checkpoints >= 1 and runner.checkpointer.pending_write.done())
        before = store.latest(TP0.topic, TP0.partition)
        handler.stalled.set()
        feed(broker, 200, start=200)  # new state: the shutdown checkpoint has something to write
        wait(all_committed(broker))
        started = time.monotonic()
        runner.request_stop()
        thread.join(TIMEOUT_S + MARGIN_S)
        elapsed = time.monotonic() - started
        assert not thread.is_alive(), "the shutdown waited on the stalled store past its deadline"
    finally:
        handler.released.set()
        thread.join(30)
    assert code == [0] and elapsed <= TIMEOUT_S + MARGIN_S
    assert runner.checkpointer.abandoned
    after = store.latest(TP0.topic, TP0.partition)
    assert after is not None and before is not None and after.manifest.offset >= before.manifest.offset


def test_a_consumer_whose_close_never_returns_is_abandoned_at_the_close_deadline(bundle):
    broker = new_broker()
    feed(broker, 100)
    runner, fake = make_runner(bundle, broker, shutdown_timeout_s=TIMEOUT_S)
    never = threading.Event()
    fake.on_consumer = lambda c: setattr(c, "close", lambda autocommit=True: never.wait(120))
    thread, code = run_in_thread(runner)
    try:
        wait(all_committed(broker))
        started = time.monotonic()
        runner.request_stop()
        thread.join(TIMEOUT_S + MARGIN_S)
        assert not thread.is_alive(), "the shutdown waited on the consumer's close past its deadline"
        assert time.monotonic() - started <= TIMEOUT_S + MARGIN_S
    finally:
        never.set()
        thread.join(30)
    assert code == [0]


def test_a_transaction_commit_the_broker_never_answers_ends_at_the_flush_deadline(bundle, tmp_path):
    """Exactly-once: the commit was submitted (with the full 2 x request_timeout_ms limit) before the stop; the
    loop stops waiting for it at the flush's deadline, aborts it and rewinds (nothing committed for it: the
    next owner or a restart redoes it)."""
    broker = new_broker()
    feed(broker, 100)
    runner, fake = make_runner(bundle, broker, shutdown_timeout_s=TIMEOUT_S, processing="exactly_once",
                               checkpoint_uri=str(tmp_path / "ckpt"), request_timeout_ms=60_000,
                               transaction_timeout_ms=130_000)
    stalled, entered, never = threading.Event(), threading.Event(), threading.Event()

    def stall_later_commits(producer):
        commit = producer.commit_transaction

        def maybe_stall():
            if stalled.is_set():
                entered.set()
                never.wait(120)
            return commit()

        producer.commit_transaction = maybe_stall

    fake.on_producer = stall_later_commits
    thread, code = run_in_thread(runner)
    try:
        wait(all_committed(broker))
        stalled.set()
        feed(broker, 100, start=100)
        wait(entered.is_set)
        started = time.monotonic()
        runner.request_stop()
        thread.join(TIMEOUT_S + MARGIN_S)
        assert not thread.is_alive(), "the shutdown waited on the transaction commit past its deadline"
        assert time.monotonic() - started <= TIMEOUT_S + MARGIN_S
    finally:
        never.set()
        thread.join(30)
    assert code == [0]
    assert not all_committed(broker)(), "the unanswered batch was committed"


def test_the_waits_that_go_on_after_a_stop_end_at_the_flushs_deadline_which_exists_only_once_asked():
    stopping = Stopping(20.0)
    assert stopping.drain_deadline() is None, "no stop asked: waits keep their own limits"
    stopping.request()
    assert stopping.drain_deadline() == stopping.deadline("drain") == pytest.approx(stopping.requested_at + 10.0)
