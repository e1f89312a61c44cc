"""Broker URL parsing: accepted forms, defaults, errors, and that passwords never leak."""

from __future__ import annotations

import pytest

from bridge.mqtt.errors import InvalidUrl, PermanentBridgeError
from bridge.mqtt.urls import BrokerUrl, parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.example:1883", BrokerUrl("mqtt", "broker.example", 1883)),
        ("mqtt://broker.example", BrokerUrl("mqtt", "broker.example", 1883)),
        ("mqtts://broker.example", BrokerUrl("mqtts", "broker.example", 8883)),
        ("mqtts://broker.example:443", BrokerUrl("mqtts", "broker.example", 443)),
        ("tcp://10.0.0.5:1884", BrokerUrl("mqtt", "10.0.0.5", 1884)),
        ("ssl://10.0.0.5", BrokerUrl("mqtts", "10.0.0.5", 8883)),
        ("MQTT://Host", BrokerUrl("mqtt", "host", 1883)),
        ("mqtt://[::1]:1999", BrokerUrl("mqtt", "::1", 1999)),
        ("mqtt://host/", BrokerUrl("mqtt", "host", 1883)),
        ("  mqtt://host:1  ", BrokerUrl("mqtt", "host", 1)),
        ("mqtt://gw-7@host:1883", BrokerUrl("mqtt", "host", 1883, "gw-7", None)),
        ("mqtt://gw-7:s3cret@host:1883", BrokerUrl("mqtt", "host", 1883, "gw-7", "s3cret")),
        ("mqtt://us%40er:p%40ss%3Aw%2Frd@host", BrokerUrl("mqtt", "host", 1883, "us@er", "p@ss:w/rd")),
        ("mqtt://user:@host", BrokerUrl("mqtt", "host", 1883, "user", "")),
    ],
)
def test_valid_urls(url: str, expected: BrokerUrl) -> None:
    assert parse_broker_url(url) == expected


def test_tls_flag_follows_scheme() -> None:
    assert parse_broker_url("mqtts://h").tls
    assert parse_broker_url("ssl://h").tls
    assert not parse_broker_url("mqtt://h").tls


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("broker.example:1883", "no scheme"),
        ("", "no scheme"),
        ("http://broker.example", "unknown scheme 'http'"),
        ("ws://broker.example", "unknown scheme"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://user:pw@", "no host"),
        ("mqtt://host:0", "invalid port"),
        ("mqtt://host:65536", "invalid port"),
        ("mqtt://host:abc", "invalid port"),
        ("mqtt://host:-1", "invalid port"),
        ("mqtt://host/some/topic", "path, query or fragment"),
        ("mqtt://host?x=1", "path, query or fragment"),
        ("mqtt://:pw@host", "password but no user name"),
    ],
)
def test_invalid_urls(url: str, fragment: str) -> None:
    with pytest.raises(InvalidUrl, match="broker url") as info:
        parse_broker_url(url)
    assert fragment in str(info.value)
    assert isinstance(info.value, PermanentBridgeError)


def test_str_and_repr_redact_the_password() -> None:
    url = parse_broker_url("mqtts://gw-1:topsecret@cloud.example:8884")
    assert str(url) == "mqtts://gw-1:***@cloud.example:8884"
    assert "topsecret" not in repr(url)
    assert url.password == "topsecret"


def test_str_without_credentials_and_ipv6() -> None:
    assert str(parse_broker_url("tcp://host")) == "mqtt://host:1883"
    assert str(parse_broker_url("mqtt://user@host")) == "mqtt://user@host:1883"
    assert str(parse_broker_url("mqtt://[::1]:5")) == "mqtt://[::1]:5"


def test_error_messages_do_not_leak_the_password() -> None:
    with pytest.raises(InvalidUrl) as info:
        parse_broker_url("mqtt://gw:topsecret@host/extra/path")
    assert "topsecret" not in str(info.value)
    assert "gw:***@host" in str(info.value)
    with pytest.raises(InvalidUrl) as info:
        parse_broker_url("mqtt://gw:topsecret@host:99999")
    assert "topsecret" not in str(info.value)
