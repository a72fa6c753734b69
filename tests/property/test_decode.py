"""Decoding cannot raise, and a message's verdict is its own.

Whatever bytes arrive, every message ends as exactly one tick or one rejection;
its verdict (reason, or the tick's values) is the same decoded alone, in any
batch, in any order, and through the slow path alone (the fast path may only
ever agree with it). The generators aim at what broke it before: huge
integers, lone surrogates, raw invalid UTF-8 inside strings, BOMs, deep
nesting, duplicate names, NaN/Infinity literals, 1.0 for integers, every JSON
type in every field, and near-valid ticks mixed with all of those.
"""

from __future__ import annotations

import json
from unittest import mock

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from operators.validation import TickColumns
from pipeline.wire import ticks
from pipeline.wire.ticks import decode_batch

FIELDS = ["v", "instrument", "ts", "price", "size", "bid", "ask", "bid_size", "ask_size"]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COMPARE = settings(SETTINGS, max_examples=150)

# -- JSON text, built by hand so that it can hold what json.dumps never writes ----------------
names = st.one_of(st.sampled_from(["A", "AAPL", "NVDA", "IBM", "", "é", "x" * 300, "é" * 130, "\ud800", "\udc00x",
                                   "\ud83d\ude00", "a\"b", "a\\b", "\x00", "{[", "\u2028"]),
                  st.text(st.characters(exclude_categories=()), max_size=6))
number_literals = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["0", "-0", "1", "1.0", "1e3", "1E2", "-1", str(2**63 - 1), str(2**63), str(-(2**63)),
                     str(-(2**63) - 1), "9" * 400, "-" + "9" * 400, "1e400", "-1e400", "1e-400", "01", "1.", ".5",
                     "+1", "0x10", "0.1000000000000000055511151231257827", "1700000000000", "1700000000",
                     "1700000000000000000", "4102444800000000001"]),
)
specials = st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "Inf", "nan", "inf", "undefined", "tru", "nul"])


def string_literal(s: str, ascii_only: bool) -> str:
    return json.dumps(s, ensure_ascii=ascii_only)


string_literals = st.builds(string_literal, names, st.booleans())
scalars = st.one_of(st.just("null"), st.just("true"), st.just("false"), number_literals, string_literals, specials)


def obj_text(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


def json_values(children):
    member_names = st.one_of(st.sampled_from(FIELDS).map(json.dumps), string_literals)
    return st.one_of(st.lists(children, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
                     st.lists(st.tuples(member_names, children), max_size=4).map(obj_text))


any_json = st.recursive(scalars, json_values, max_leaves=8)
deep = st.tuples(st.integers(1, 80), st.sampled_from("[{")).map(
    lambda d: ("[" * d[0] + "1" + "]" * d[0]) if d[1] == "[" else ('{"a":' * d[0] + "1" + "}" * d[0]))
hostile_strings = st.builds(string_literal, st.sampled_from(["\ud800", "\udfff", "a\udc00", "x" * 300, "é" * 130,
                                                              "NVDA", "\x00", "\ufeff"]), st.booleans())
field_values = st.one_of(hostile_strings, number_literals, scalars, any_json, deep)

BASE = {"v": "1", "instrument": '"A"', "ts": "1700000000000000000", "price": "10.5", "size": "3",
        "bid": "10.4", "ask": "10.6", "bid_size": "100", "ask_size": "200"}


@st.composite
def near_ticks(draw) -> str:
    """A valid tick, then a few edits: fields changed, dropped, repeated, extra fields."""
    pairs = [(json.dumps(k), v) for k, v in BASE.items() if draw(st.integers(0, 9)) > 0]
    for _ in range(draw(st.integers(0, 3))):
        name = json.dumps(draw(st.sampled_from(FIELDS + ["instrument", "instrument", "x", "Price"])))
        value = draw(field_values)
        if draw(st.booleans()) or not pairs:
            pairs.append((name, value))  # an extra or a repeated member
        else:
            pairs[draw(st.integers(0, len(pairs) - 1))] = (name, value)
    return obj_text(pairs)


@st.composite
def one_field_off(draw) -> str:
    """A valid tick with exactly one field's value replaced: what a buggy producer sends."""
    name = draw(st.sampled_from(FIELDS))
    return obj_text([(json.dumps(k), draw(field_values) if k == name else v) for k, v in BASE.items()])


@st.composite
def message_values(draw) -> bytes | None:
    kind = draw(st.integers(0, 12))
    if kind == 12:  # a valid tick but for one number out of float range (hundreds of digits)
        name = draw(st.sampled_from(["price", "size", "bid", "ask", "bid_size", "ask_size", "ts", "v"]))
        huge = draw(st.sampled_from(["", "-"])) + "9" * draw(st.integers(300, 500))
        return obj_text([(json.dumps(k), huge if k == name else v) for k, v in BASE.items()]).encode()
    if kind >= 10:  # a valid tick but for a hostile instrument (escaped or raw surrogates, NUL, BOM, too long)
        return obj_text([(json.dumps(k), draw(hostile_strings) if k == "instrument" else v)
                         for k, v in BASE.items()]).encode("utf-8", "surrogatepass")
    if kind == 0:
        return draw(st.one_of(st.none(), st.binary(max_size=40)))
    text = (draw(any_json) if kind == 1 else draw(deep) if kind == 2
            else draw(one_field_off()) if kind < 6 else draw(near_ticks()))
    raw = text.encode("utf-8", "surrogatepass")  # a lone surrogate unescaped: invalid UTF-8 bytes
    edit = draw(st.integers(0, 7))
    if edit == 0:
        raw = b"\xef\xbb\xbf" + raw
    elif edit == 1:
        raw = draw(st.sampled_from([b" ", b"\t", b"\n", b"\r\n"])) + raw + draw(st.sampled_from([b"", b" ", b"\n"]))
    elif edit == 2 and raw:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\\", b'"', b"\n"])) + raw[at:]
    return raw


# Mostly no key (the value names the instrument) or the matching one, so that a hostile
# instrument reaches the columns instead of stopping at key_mismatch.
keys = st.one_of(st.none(), st.none(), st.just(b"A"), st.binary(max_size=6),
                 names.map(lambda s: s.encode("utf-8", "surrogatepass")))
messages = st.lists(st.tuples(keys, message_values()), max_size=12)


# -- verdicts --------------------------------------------------------------------------------
def verdicts(batch: list[tuple[bytes | None, bytes | None]]) -> list[tuple]:
    """One verdict per message, by position: ("tick", values...) or ("reject", reason)."""
    out = decode_batch([k for k, _ in batch], [v for _, v in batch], [7] * len(batch))
    TickColumns.from_arrow(out.ticks)  # the operator's view of the columns must build too
    result: list[tuple | None] = [None] * len(batch)
    for i, reason, _ in out.rejected:
        assert result[i] is None, f"message {i} has two verdicts"
        result[i] = ("reject", reason.value)
    for row in out.ticks.to_pylist():
        i = row.pop("index")
        assert result[i] is None, f"message {i} has two verdicts"
        result[i] = ("tick",) + tuple(repr(row[c]) for c in sorted(row))
    assert None not in result, "a message has no verdict"
    return result


def slow_only(batch):
    """The verdicts with the fast path switched off: the spec, message by message."""
    with mock.patch.object(ticks, "_flat_ascii_objects",
                           lambda vals, lens: (ticks.np.zeros(len(vals), dtype=bool), b"")):
        return verdicts(batch)


@SETTINGS
@given(messages)
def test_no_message_raises_and_each_gets_one_verdict(batch):
    verdicts(batch)
    for m in batch:
        verdicts([m])


@COMPARE
@given(messages, st.randoms(use_true_random=False))
def test_each_message_has_one_verdict_its_own_in_any_batch(batch, rnd):
    together = verdicts(batch)
    assert together == [verdicts([m])[0] for m in batch]
    order = list(range(len(batch)))
    rnd.shuffle(order)
    shuffled = verdicts([batch[i] for i in order])
    assert [shuffled[order.index(i)] for i in range(len(batch))] == together


@COMPARE
@given(messages)
@example([(None, b'{"v":1,"instrument":"A","ts":1700000000000000000,"price":-0,"size":-0.0,"bid":10.4,"ask":10.6}')])
def test_fast_path_gives_the_slow_paths_verdict(batch):
    assert verdicts(batch) == slow_only(batch)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=10)), st.one_of(st.none(), st.binary(max_size=80))),
                max_size=12))
def test_arbitrary_bytes_are_a_tick_or_a_reason(batch):
    assert verdicts(batch) == [verdicts([m])[0] for m in batch] == slow_only(batch)


# -- cost: a message passing the fast-path filter that Arrow refuses costs a bounded amount ---------------
# Flat, printable-ASCII objects (what the fast-path filter lets through) with one field Arrow's typed reader
# refuses: a string, a boolean or a float where an integer or a number belongs, an object's value an
# unterminated literal, and so on. Mixed with clean ticks, in any proportion.
ARROW_REFUSED = ['"price":"1"', '"price":true', '"ts":1.5', '"ts":"1700000000000000000"', '"v":"1"',
                 '"instrument":1', '"size":false', '"ts":1e3', '"price":-', '"bid":"x"', '"ask":tru']


def _clean(i: int) -> str:
    return f'"instrument":"I{i % 7}","ts":{1700000000000000000 + i},"price":{10 + i % 5}.5,"size":{i % 3}'


@st.composite
def fast_filter_mixes(draw) -> list[tuple[None, bytes]]:
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        if draw(st.booleans()):
            out.append((None, ("{" + _clean(i) + "}").encode()))
        else:
            out.append((None, ("{" + _clean(i) + "," + draw(st.sampled_from(ARROW_REFUSED)) + "}").encode()))
    return out


class ArrowReads:
    """Counts the reads handed to Arrow's JSON reader and the bytes they cover."""

    def __init__(self):
        self.calls, self.bytes = 0, 0
        self._real = ticks.pajson.read_json

    def __call__(self, source, *args, **kwargs):
        self.calls += 1
        self.bytes += source.size()
        return self._real(source, *args, **kwargs)


def decode_counting(batch):
    reads = ArrowReads()
    with mock.patch.object(ticks.pajson, "read_json", reads):
        result = verdicts(batch)
    return result, reads


@COMPARE
@given(fast_filter_mixes())
def test_arrow_refusals_cost_one_extra_read_and_keep_each_messages_verdict(batch):
    """Every message passes the fast-path filter; the ones Arrow refuses go to the strict parser in one pass
    (no halving search): Arrow reads the batch's bytes at most twice, and each verdict is the message's own."""
    together, reads = decode_counting(batch)
    assert together == [verdicts([m])[0] for m in batch] == slow_only(batch)
    joined = sum(len(v) + 1 for _, v in batch)
    assert reads.calls <= 1 + -(-len(batch) // ticks.FAST_CHUNK)
    assert reads.bytes <= 2 * joined


def test_a_5000_message_batch_of_arrow_refusals_is_read_a_bounded_number_of_times():
    """The figure behind benchmarks/decode.py: half the messages Arrow refuses, interleaved. Halving re-read
    each refused message about log2(5000) times (13 reads per message, 2.7 s on the issue's machine)."""
    batch = [(None, ("{" + _clean(i) + ("," + ARROW_REFUSED[i % len(ARROW_REFUSED)] if i % 2 else "") + "}")
              .encode()) for i in range(5000)]
    strict = mock.Mock(wraps=ticks._decode_one)
    with mock.patch.object(ticks, "_decode_one", strict):
        result, reads = decode_counting(batch)
    joined = sum(len(v) + 1 for _, v in batch)
    assert reads.bytes <= 2 * joined and reads.calls <= 1 + 5000 // ticks.FAST_CHUNK + 1
    assert strict.call_count <= 5000
    assert sum(1 for v in result if v[0] == "tick") == 2500
