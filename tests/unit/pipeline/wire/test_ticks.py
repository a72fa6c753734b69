"""Decoding tick messages: a whole batch at once, bad ones isolated with reasons."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.validation import DecodeReason
from pipeline.wire.ticks import decode_batch


def msg(**fields) -> bytes:
    return json.dumps({"v": 1, "ts": 1_700_000_000_000_000_000, "price": 10.0, **fields}).encode()


def test_good_batch_decodes_on_the_fast_path(monkeypatch):
    import pipeline.wire.ticks

    def slow_path(indices, values, rejected):
        raise AssertionError(f"messages {indices} left the fast path")

    monkeypatch.setattr(pipeline.wire.ticks, "_decode_slowly", slow_path)  # the one way off the fast path
    keys = [b"A", b"B", None]
    values = [msg(instrument="A"), msg(size=3), msg(instrument="C", bid=9.9, ask=10.1)]
    out = decode_batch(keys, values)
    assert out.rejected == []
    assert out.ticks.column("instrument").to_pylist() == ["A", "B", "C"]
    assert out.ticks.column("index").to_pylist() == [0, 1, 2]
    assert out.ticks.column("size").to_pylist() == [None, 3.0, None]


def test_each_bad_kind_gets_its_reason_and_the_rest_survive():
    cases = [
        (b"A", b"\xff{}", DecodeReason.BAD_UTF8),
        (b"A", b"{nope", DecodeReason.BAD_JSON),
        (b"A", b'"just a string"', DecodeReason.NOT_AN_OBJECT),
        (b"A", json.dumps({"ts": 1}).encode(), DecodeReason.MISSING_FIELD),
        (b"A", json.dumps({"ts": "x", "price": 1.0}).encode(), DecodeReason.WRONG_TYPE),
        (b"A", msg(v=2), DecodeReason.UNKNOWN_SCHEMA_VERSION),
        (b"B", msg(instrument="A"), DecodeReason.KEY_MISMATCH),
        (b"K" * 1000, msg(), DecodeReason.OVERSIZED_KEY),
        (b"A", b" " * 5000, DecodeReason.OVERSIZED_VALUE),
        (b"\xff", msg(), DecodeReason.BAD_UTF8),
        (None, msg(), DecodeReason.MISSING_FIELD),
    ]
    keys, values = [b"G"], [msg()]
    for k, v, _ in cases:
        keys += [k, b"G"]
        values += [v, msg()]
    out = decode_batch(keys, values)
    assert [(i, r) for i, r, _ in out.rejected] == [(2 * j + 1, reason) for j, (_, _, reason) in enumerate(cases)]
    assert out.ticks.column("index").to_pylist() == list(range(0, len(values), 2))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=20)), st.one_of(st.none(), st.binary(max_size=60))),
                max_size=30))
def test_any_bytes_are_either_a_tick_or_a_reason_never_an_exception(messages):
    keys = [k for k, _ in messages]
    values = [v for _, v in messages]
    out = decode_batch(keys, values)
    decoded = set(out.ticks.column("index").to_pylist())
    rejected = [i for i, _, _ in out.rejected]
    assert len(rejected) == len(set(rejected))
    assert decoded.isdisjoint(rejected) and decoded | set(rejected) == set(range(len(messages)))


def verdict(value: bytes, key: bytes | None = b"A"):
    out = decode_batch([key], [value])
    return out.rejected[0][1] if out.rejected else out.ticks.to_pylist()[0]


def test_the_three_messages_that_crashed_the_decoder_are_rejected():
    big = b"9" * 400
    # 1. a 400-digit integer in a numeric field, on the slow path (the "\n" sends it there):
    #    a number beyond float64 reads as inf, which the operator refuses (non_finite_*)
    assert verdict(b'{"ts":1700000000000000000,\n"price":10,"size":' + big + b"}")["size"] == float("inf")
    # 2. a lone surrogate escape in instrument
    assert verdict(b'{"ts":1700000000000000000,"price":10,"instrument":"\\ud800"}', None) == DecodeReason.BAD_JSON
    # 3. raw invalid UTF-8 inside a string field (previously taken by the fast path)
    assert verdict(b'{"ts":1700000000000000000,"price":10,"instrument":"A\xff"}', None) == DecodeReason.BAD_UTF8


def test_strict_json_spec_cases():
    ok = b'"ts":1700000000000000000,"price":10'
    cases = [
        (b"\xef\xbb\xbf{" + ok + b"}", DecodeReason.BAD_JSON),  # BOM
        (b"{" + ok + b',"bid":NaN}', DecodeReason.BAD_JSON),  # NaN quote: not JSON
        (b"{" + ok + b',"x":Infinity}', DecodeReason.BAD_JSON),  # even in an ignored field
        (b"{" + ok + b',"price":11}', DecodeReason.BAD_JSON),  # a tick field twice
        (b'{"ts":1700000000000000000.0,"price":10}', DecodeReason.WRONG_TYPE),  # 1.0 for an int
        (b"{" + ok + b',"x":' + b"[" * 40 + b"]" * 40 + b"}", DecodeReason.BAD_JSON),  # deeper than 32
        (b"null", DecodeReason.NOT_AN_OBJECT),  # crashed pyarrow's reader (segfault) at the head of a batch
        (b"{" + ok + b',"instrument":"' + b"x" * 257 + b'"}', DecodeReason.OVERSIZED_INSTRUMENT),
    ]
    for value, reason in cases:
        assert verdict(value, None) == reason, value[:60]
    assert verdict(b"{" + ok + b',"x":1,"x":2}')["price"] == 10.0  # names of ignored fields are not checked
    assert verdict(b"{" + ok + b',"instrument":"' + b"x" * 256 + b'"}', None)["instrument"] == "x" * 256


def test_record_timestamps_become_record_ts_in_ns():
    out = decode_batch([b"A", b"A"], [msg(), msg()], [1_700_000_000_123, -1])
    assert out.ticks.column("record_ts").to_pylist() == [1_700_000_000_123_000_000, None]
