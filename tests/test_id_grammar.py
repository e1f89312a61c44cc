"""One id grammar: bridge/protocol/topics.py defines it, device_sim/topics.py keeps a copy (device_sim may
not import bridge/). Both agree on every string, and neither lets an id act as a path or wildcard."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.topics import ID_PATTERN, TopicPattern, valid_id
from device_sim import topics as sim_topics
from device_sim.errors import SimConfigError

ALPHABET = string.ascii_letters + string.digits + "_.-/+#$ \\\0\n\t~é"
candidates = st.one_of(
    st.text(),
    st.text(alphabet=ALPHABET, max_size=70),
    st.from_regex(ID_PATTERN, fullmatch=True),
    st.sampled_from([".", "..", "...", ".hidden", "-rf", "a..b", "a.", "x" * 64, "x" * 65, "dev-1", "_", "9"]),
)


@given(candidates)
def test_gateway_and_simulator_agree_on_every_string(value: str) -> None:
    sim_metric = sim_topics.METRIC_RE.fullmatch(value) is not None
    assert valid_id(value) == sim_topics.is_valid_device_id(value) == sim_metric


@given(candidates)
def test_a_valid_id_is_one_plain_topic_level(value: str) -> None:
    if valid_id(value):
        assert 1 <= len(value) <= 64
        assert not set(value) & set("/\\+#$ \0\n\t")
        assert value[0] not in ".-"  # never '.', '..', a hidden name or an option
        assert TopicPattern("devices/{device_id}/telemetry").format(device_id=value).count("/") == 2


def test_dot_names_and_separators_are_refused_everywhere() -> None:
    for bad in (".", "..", ".x", "-x", "a/b", "a+b", "a#", "", "x" * 65, "$SYS", "a b"):
        assert not valid_id(bad) and not sim_topics.is_valid_device_id(bad), bad
    for good in ("dev-1", "a..b", "a.", "_x", "9", "x" * 64):
        assert valid_id(good) and sim_topics.is_valid_device_id(good), good
    assert not valid_id(7)


def test_the_simulator_refuses_an_id_prefix_that_breaks_the_grammar() -> None:
    assert sim_topics.device_ids("dev-", 2) == ["dev-0001", "dev-0002"]
    assert sim_topics.device_ids("", 1) == ["0001"]
    for bad in (".", "..", "-", "a/"):
        with pytest.raises(SimConfigError):
            sim_topics.device_ids(bad, 1)
