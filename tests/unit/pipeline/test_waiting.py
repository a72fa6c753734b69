"""pipeline.waiting: the backoff's delays, the retry's verdicts, its deadline and its stop, the stop-aware
sleep, the bounded call. Time is a fake clock wherever the claim is about amounts of time; the two claims
about a thread being woken ("promptly") allow seconds for what must take an hour otherwise."""

from __future__ import annotations

import ast
import itertools
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline import waiting
from pipeline.waiting import GIVE_UP, Backoff, OutOfTime, bounded, pause, retry

backoffs = st.builds(
    lambda first, extra, factor: Backoff(first, first + extra, factor),
    st.floats(0, 60, allow_nan=False), st.floats(0, 600, allow_nan=False), st.floats(1, 10, allow_nan=False))


class FakeClock:
    """``time`` for pipeline.waiting: ``sleep`` moves ``monotonic`` on and records what was slept."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.slept.append(s)
        self.now += s


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(waiting, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep))
    return fake


def failing(n: int, result="done", error=ConnectionError):
    """An attempt that fails ``n`` times, then returns ``result``; ``calls`` counts the tries."""
    calls = []

    def attempt():
        calls.append(1)
        if len(calls) <= n:
            raise error(f"failure {len(calls)}")
        return result

    attempt.calls = calls
    return attempt


# -- the backoff -----------------------------------------------------------------------------------

@given(backoffs)
def test_each_delay_is_the_one_before_times_the_factor_never_above_the_cap(b):
    delays = list(itertools.islice(b.delays(), 40))
    assert delays[0] == b.first_s
    for before, after in zip(delays, delays[1:]):
        assert after == min(before * b.factor, b.cap_s)
        assert before <= after <= b.cap_s


def test_the_default_backoff_doubles_from_half_a_second_to_ten():
    assert list(itertools.islice(Backoff().delays(), 8)) == [0.5, 1, 2, 4, 8, 10, 10, 10]


@pytest.mark.parametrize("args", [(2.0, 1.0, 2.0), (-1.0, 1.0, 2.0), (0.5, 10.0, 0.5)])
def test_a_backoff_that_would_shrink_or_go_negative_is_refused(args):
    with pytest.raises(ValueError):
        Backoff(*args)


# -- retry's verdicts ------------------------------------------------------------------------------

@given(backoffs, st.integers(0, 12))
def test_retry_waits_the_backoffs_delays_between_tries_and_returns_the_result(b, n):
    attempt, seen, slept, beats = failing(n), [], [], []
    got = retry(attempt, lambda exc, s: seen.append((str(exc), s)), backoff=b, sleep=slept.append,
                beat=lambda: beats.append(1))
    expected = list(itertools.islice(b.delays(), n))
    assert got == "done" and len(attempt.calls) == n + 1 and len(beats) == n + 1
    assert [s for _, s in seen] == expected and slept == expected
    assert [e for e, _ in seen] == [f"failure {i + 1}" for i in range(n)]


def test_give_up_ends_the_retries_quietly():
    attempt = failing(10)
    assert retry(attempt, lambda exc, s: GIVE_UP if len(attempt.calls) == 3 else None, sleep=lambda s: None) is None
    assert len(attempt.calls) == 3


def test_an_error_raised_by_on_error_ends_the_retries_with_it():
    attempt = failing(10)

    def on_error(exc, s):
        if len(attempt.calls) == 2:
            raise RuntimeError("fatal") from exc

    with pytest.raises(RuntimeError, match="fatal"):
        retry(attempt, on_error, sleep=lambda s: None)
    assert len(attempt.calls) == 2


def test_a_failure_retry_on_does_not_name_is_raised_at_once_without_a_verdict_or_a_sleep():
    attempt, seen, slept = failing(1, error=KeyError), [], []
    with pytest.raises(KeyError):
        retry(attempt, lambda exc, s: seen.append(exc), retry_on=ConnectionError, sleep=slept.append)
    assert len(attempt.calls) == 1 and seen == [] and slept == []


# -- the deadline ----------------------------------------------------------------------------------

@given(backoffs.filter(lambda b: b.first_s >= 0.001), st.floats(0.001, 1000, allow_nan=False))
def test_sleeps_end_at_the_deadline_and_a_failure_past_it_ends_the_retries(b, within_s):
    assume(within_s <= 500 * b.first_s)  # at most some hundreds of tries
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(waiting, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
        deadline = clock.now + within_s
        attempt, seen = failing(10**9), []
        with pytest.raises(OutOfTime) as info:
            retry(attempt, lambda exc, s: seen.append(s), backoff=b, deadline=deadline)
    assert isinstance(info.value.__cause__, ConnectionError)
    assert str(info.value.__cause__) == f"failure {len(attempt.calls)}", "the cause is the last failure"
    assert clock.now == pytest.approx(deadline), "slept to the deadline, not past it"
    assert len(seen) == len(attempt.calls) - 1, "the failure past the deadline gets no verdict"
    delays = list(itertools.islice(b.delays(), len(seen)))
    assert seen[:-1] == delays[:-1] and seen[-1] <= delays[-1], "only the last sleep is cut"
    assert clock.slept == seen


def test_a_deadline_that_appears_later_is_honoured_from_then_on(clock):
    """The shutdown budget: no deadline until a stop is requested, then one."""
    attempt = failing(10**9)
    budget: list[float] = []

    def on_error(exc, s):
        if len(attempt.calls) == 4:
            budget.append(clock.now + 3.0)

    with pytest.raises(OutOfTime):
        retry(attempt, on_error, deadline=lambda: budget[0] if budget else None)
    assert clock.slept[:3] == [0.5, 1, 2] and sum(clock.slept[3:]) == pytest.approx(3.0)


def test_a_success_at_the_deadline_is_a_success(clock):
    attempt = failing(3)
    assert retry(attempt, backoff=Backoff(1.0, 1.0), deadline=clock.now + 3.0) == "done"


# -- the stop --------------------------------------------------------------------------------------

def test_a_set_stop_means_no_try():
    stop = threading.Event()
    stop.set()
    attempt = failing(0)
    assert retry(attempt, stop=stop) is None and attempt.calls == []


def test_a_stop_during_the_retries_ends_them_before_the_next_try():
    stop = threading.Event()
    attempt = failing(10)
    assert retry(attempt, lambda exc, s: stop.set() if len(attempt.calls) == 2 else None, stop=stop,
                 backoff=Backoff(0.0, 0.0)) is None
    assert len(attempt.calls) == 2


def _in_thread(fn) -> tuple[threading.Thread, list]:
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_stop_ends_a_long_sleep_of_a_retry_promptly():
    stop = threading.Event()
    entered = threading.Event()
    thread, out = _in_thread(lambda: retry(failing(1), lambda exc, s: entered.set(), stop=stop,
                                           backoff=Backoff(3600.0, 3600.0)))
    assert entered.wait(10)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and out == [None]


def test_pause_is_false_when_stopped_and_true_when_slept_out():
    stop = threading.Event()
    assert pause(0.0, stop=stop) is True
    stop.set()
    assert pause(3600.0, stop=stop) is False


def test_a_wake_makes_a_sleep_look_at_a_deadline_that_came_meanwhile():
    """A stop request during a long backoff of a wait that goes on after it (a publish at shutdown): the sleep
    ends at the deadline the request brought, not an hour later."""
    wake, budget = threading.Event(), []
    thread, out = _in_thread(lambda: pause(3600.0, wake=wake, deadline=lambda: budget[0] if budget else None))
    budget.append(time.monotonic() + 0.2)
    wake.set()
    thread.join(10)
    assert not thread.is_alive() and out == [True]
    assert time.monotonic() >= budget[0], "woken, it slept on until the deadline (a retry does not spin)"


# -- the bounded call ------------------------------------------------------------------------------

class Timeout(Exception):
    pass


def test_a_bounded_call_returns_what_the_call_returns():
    assert bounded(lambda a, b: a + b, 2, 3, limit_s=60) == 5


def test_a_bounded_call_raises_what_the_call_raises():
    def refuse():
        raise PermissionError("no")

    with pytest.raises(PermissionError, match="no"):
        bounded(refuse, limit_s=60, error=Timeout)


def test_a_bounded_call_that_outlives_its_limit_fails_with_the_callers_error_and_beats_meanwhile():
    release, beats = threading.Event(), []
    try:
        with pytest.raises(Timeout, match="commit_transaction got no answer within 0.3 s"):
            bounded(release.wait, 30, limit_s=0.3, error=Timeout, what="commit_transaction",
                    beat=lambda: beats.append(1), beat_every_s=0.05)
        assert beats, "liveness beaten while it waited"
    finally:
        release.set()


# -- one way to wait -------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[3]
TICKERS = {("pipeline/live/clients.py", "_watch")}  # the stall watch's thread: a ticker, not a wait for an answer


def sleeps_and_wait_loops(source: str, module: str) -> list[str]:
    """Calls of ``time.sleep`` anywhere, and of ``.wait(...)`` inside a loop, in one module's source."""
    found = []

    def visit(node, function: str | None, in_loop: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function, in_loop = node.name, False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (module, function) not in TICKERS:
            name = node.func.attr
            if name == "sleep" and isinstance(node.func.value, ast.Name) and node.func.value.id == "time":
                found.append(f"time.sleep in {function} (line {node.lineno})")
            if name == "wait" and in_loop:
                found.append(f".wait in a loop in {function} (line {node.lineno})")
        for child in ast.iter_child_nodes(node):
            visit(child, function, in_loop or isinstance(node, (ast.While, ast.For)))

    visit(ast.parse(source), None, False)
    return found


def test_the_runtime_and_the_client_adapters_wait_only_through_pipeline_waiting():
    modules = sorted((ROOT / "pipeline" / "live").glob("*.py")) + sorted((ROOT / "pipeline" / "kafka").glob("*.py"))
    assert len(modules) > 10
    found = {m.relative_to(ROOT).as_posix(): sleeps_and_wait_loops(m.read_text(), m.relative_to(ROOT).as_posix())
             for m in modules}
    assert {m: f for m, f in found.items() if f} == {}


def test_the_check_finds_a_hand_written_retry_and_spares_only_the_ticker():
    source = ("import time\n\ndef f(stop):\n    while True:\n        stop.wait(1)\n\n"
              "def g():\n    time.sleep(1)\n\ndef _watch(closed):\n    while not closed.wait(0.5):\n        pass\n")
    assert sleeps_and_wait_loops(source, "pipeline/live/x.py") == [
        ".wait in a loop in f (line 5)", "time.sleep in g (line 8)", ".wait in a loop in _watch (line 11)"]
    assert sleeps_and_wait_loops(source, "pipeline/live/clients.py") == [
        ".wait in a loop in f (line 5)", "time.sleep in g (line 8)"]
