"""The decoder remembers topics it has seen with a valid device id (and metric names seen valid,
whose plain values then take an inline path): for any sequence of messages, a decoder that has seen
the earlier ones decodes each exactly as a fresh decoder does."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import DecodeSection, TopicsSection
from gateway.process.decode import Decoder

NOW = 1_700_000_000_000

topics = st.sampled_from([
    "devices/d1/telemetry", "devices/d-2/telemetry", "devices/d1/telemetry/temp", "devices/d1/telemetry/b@d",
    "devices/d1/events", "devices/d1/responses", "devices/b@d/telemetry", "devices//telemetry", "other/d1",
])
json_payloads = st.dictionaries(st.sampled_from(["ts", "seq", "t", "h", "b@d", ""]),
                                st.one_of(st.floats(), st.integers(min_value=-(2**70), max_value=2**70),
                                          st.none(), st.text(max_size=3)), max_size=4)
payloads = st.one_of(
    json_payloads.map(lambda o: json.dumps(o).encode()),
    json_payloads.map(lambda o: (" " + json.dumps(o) + "\n").encode()),  # whitespace around the value
    st.sampled_from([b"21.5", b" 7 ", b"{", b"[1]", b"{} x", b"\xff", b"", b'{"t": 1}{}']),
    st.binary(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(topics, payloads), max_size=30))
def test_a_warm_decoder_decodes_as_a_fresh_one(messages: list[tuple[str, bytes]]) -> None:
    warm = Decoder(TopicsSection(), DecodeSection())
    for topic, payload in messages:
        fresh = Decoder(TopicsSection(), DecodeSection())
        got, want = warm.decode(topic, payload, NOW), fresh.decode(topic, payload, NOW)
        assert got == want, (topic, payload)
        assert repr(got) == repr(want)  # the same types too (5.0 == 5, -0.0 == 0.0)
