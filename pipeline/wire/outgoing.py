"""The records the live loop produces: ``Outgoing`` (a forecast message or a dead letter, ready for the
producer), and dead letters: the refused record's own bytes with the reason in headers, cut to fit when
refused for size.
"""

from __future__ import annotations

from typing import NamedTuple

# A dead letter refused for its size is sent again cut: its value to 1 KiB, then to nothing (key to 256 bytes).
DEAD_LETTER_CUTS = (1024, 0)
DEAD_LETTER_KEY_BYTES = 256


class DeadLetter(NamedTuple):
    """A record the run refused: the record itself (its index in the batch before), the reason label, detail."""

    record: object
    reason: str
    detail: str


class Outgoing(NamedTuple):
    """One record to produce: a forecast message (the encoders make them) or a dead letter (``dead``: the one it
    carries, rebuilt smaller when it must be cut). Partition None: the producer's partitioner picks by key."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list | None
    partition: int | None
    dead: DeadLetter | None = None


def dead_letter(topic: str, d: DeadLetter, cut_level: int) -> Outgoing:
    """A refused message with its key and value, the reason, detail and source in headers; cut to fit when a
    size refusal was seen for it before (``tickcast.truncated``, with the original sizes)."""
    r = d.record
    key, value = r.key, r.value if r.value is not None else b""
    headers = [("tickcast.reason", d.reason.encode()), ("tickcast.detail", d.detail.encode()[:512]),
               ("tickcast.source", f"{r.topic}/{r.partition}/{r.offset}".encode())]
    if cut_level:
        headers += [("tickcast.truncated", b"true"), ("tickcast.original_size", str(len(value)).encode())]
        value = value[:DEAD_LETTER_CUTS[cut_level - 1]]
        if key is not None and len(key) > DEAD_LETTER_KEY_BYTES:
            headers.append(("tickcast.original_key_size", str(len(key)).encode()))
            key = key[:DEAD_LETTER_KEY_BYTES]
    return Outgoing(topic, key, value, headers, None, d)
