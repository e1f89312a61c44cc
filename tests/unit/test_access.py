"""ACL patterns, filter coverage, client-id rules and the denial log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.source.access import (
    INTERNAL_IDENTITY,
    AclPolicy,
    Denials,
    check_pattern,
    client_id_allowed,
    filter_covers,
    pattern_as_filter,
    topic_matches,
)
from gateway.source.local import acl_policy
from tests.e2e.harness import gateway_config
from tests.support import FakeClock

LEVEL = st.sampled_from(["a", "b", "devices", "d1", "d2", "x"])
topics = st.lists(LEVEL, min_size=1, max_size=5).map("/".join)
filters = st.lists(st.sampled_from(["a", "b", "devices", "d1", "+", "#"]), min_size=1, max_size=5).map(
    lambda levels: "/".join(levels[: levels.index("#") + 1] if "#" in levels else levels))


@given(filters, filters, topics)
def test_a_covered_filter_never_matches_a_topic_the_covering_one_does_not(allowed: str, requested: str,
                                                                          topic: str) -> None:
    if filter_covers(allowed, requested) and topic_matches(requested, topic):
        assert topic_matches(allowed, topic)


@given(filters)
def test_every_filter_covers_itself_and_hash_covers_all(f: str) -> None:
    assert filter_covers(f, f)
    assert filter_covers("#", f)


def test_default_policy_confines_a_device_to_its_own_topics(tmp_path: Path) -> None:
    policy = acl_policy(gateway_config(tmp_path, "mqtt://127.0.0.1:1"))
    g = policy.grants("d1")
    for topic in ("devices/d1/telemetry", "devices/d1/telemetry/temp", "devices/d1/events", "devices/d1/responses"):
        assert g.may_publish(topic), topic
    for topic in ("devices/d2/telemetry", "devices/d1/commands/ping", "devices/d1/telemetry/a/b", "edge/gw/x"):
        assert not g.may_publish(topic), topic
    assert g.may_subscribe("devices/d1/commands/#") and g.may_subscribe("devices/d1/commands/+")
    for f in ("#", "devices/+/commands/#", "devices/d2/commands/ping", "devices/d1/#", "+/d1/commands/x"):
        assert not g.may_subscribe(f), f
    assert policy.grants(INTERNAL_IDENTITY).may_subscribe("#")


def test_custom_patterns_take_device_id_as_a_whole_level() -> None:
    policy = AclPolicy(("site/{device_id}/up/#",), ("site/{device_id}/down",))
    assert policy.grants("d1").may_publish("site/d1/up/x/y")
    assert not policy.grants("d1").may_publish("site/d2/up/x")
    for bad in ("site/dev-{device_id}/up", "site/{name}/up", "site/#/x", "site/a+/{device_id}", "site/all"):
        with pytest.raises(ValueError, match=r"level|must contain"):
            check_pattern(bad)
    assert pattern_as_filter("devices/{device_id}/commands/{name}", open_end=True) == "devices/{device_id}/commands/#"


@given(st.text(min_size=0, max_size=20))
def test_client_id_exact_or_suffix(suffix: str) -> None:
    assert client_id_allowed("{device_id}", "d1", "d1")
    assert client_id_allowed("{device_id}", "d1", "d1" + suffix) == (suffix == "")
    assert client_id_allowed("{device_id}-*", "d1", "d1-" + suffix)
    assert not client_id_allowed("{device_id}-*", "d1", "d2-" + suffix)
    assert not client_id_allowed("{device_id}-*", "d*", "dx-" + suffix)  # the identity is literal


def test_denials_are_counted_always_and_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(0.0)
    denials = Denials(clock=clock)
    with caplog.at_level(logging.WARNING, logger="gateway.source.access"):
        for _ in range(5):
            denials.deny("acl_publish", "d1", "publish to 'devices/d2/telemetry'")
        denials.deny("acl_subscribe", "d1", "subscribe to '#'")
        clock.now = 11.0
        denials.deny("acl_publish", "d1", "again")
    assert denials.counts == {"acl_publish": 6, "acl_subscribe": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "d1" in lines[0] and "acl_publish" in lines[0]
    assert "+4 more" in lines[2]


def test_certificate_identity_is_the_cn_or_the_only_san_dns_name() -> None:
    from gateway.source.identity import PeerCert

    cn = PeerCert.from_ssl({"subject": ((("commonName", "dev-1"),),), "subjectAltName": (("DNS", "x"),),
                            "serialNumber": "00AB"})
    assert cn.identity == "dev-1" and cn.serial == "AB"
    san = PeerCert.from_ssl({"subject": ((("organizationName", "acme"),),), "subjectAltName": (("DNS", "dev-2"),),
                             "serialNumber": "1"})
    assert san.identity == "dev-2"
    two = PeerCert.from_ssl({"subjectAltName": (("DNS", "a"), ("DNS", "b")), "serialNumber": "1"})
    assert two.identity is None  # ambiguous: refused
