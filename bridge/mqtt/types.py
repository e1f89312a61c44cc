"""Plain settings and message types of the MQTT client adapter (no paho here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from bridge.mqtt.urls import BrokerUrl


@dataclass(frozen=True)
class TlsSettings:
    """TLS options. ``insecure`` skips certificate and hostname verification (labs only)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: str | None = field(default=None, repr=False)
    insecure: bool = False


@dataclass(frozen=True)
class Login:
    """Who a client is on the cloud broker: user name and password (the password from an
    environment variable or a file, never the command line) and TLS files. Empty: anonymous, and
    TLS only for an ``mqtts://`` URL."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None


ANONYMOUS = Login()


@dataclass(frozen=True)
class Will:
    """Last will, published by the broker when the session ends without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class ClientSettings:
    """How to connect. ``username``/``password`` override the URL's userinfo; ``tls`` enables TLS
    even for an ``mqtt://`` URL, and an ``mqtts://`` URL without ``tls`` uses ``TlsSettings()``.
    ``manual_ack``: incoming QoS 1/2 messages are acknowledged only by :meth:`MqttConnection.ack`.
    ``retain_as_published`` (MQTT 5 only): subscriptions ask the broker to keep the retain flag on
    live delivery, so a message published retained is recognisable as such even while the client
    is connected (MQTT 3.1.1 brokers clear the flag on live delivery).
    ``retain_check_prefixes`` (MQTT 3.1.1 only, where the flag is lost): a message under one of
    these topic prefixes that arrives without the retain flag is handed on only after a subscribe /
    unsubscribe round trip on its exact topic, during which the broker sends its retained message
    there, if any, flagged (see :meth:`MqttConnection.subscribe`).
    ``receive_maximum`` (MQTT 5 only): how many QoS 1/2 messages the broker may send this client
    before it acknowledges any (CONNECT's Receive Maximum); None leaves it to the broker (mosquitto:
    ``max_inflight_messages``, 20 by default).
    """

    client_id: str
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: int = 30
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TlsSettings | None = None
    will: Will | None = None
    clean_start: bool = True
    max_inflight: int = 20
    connect_timeout_s: float = 10.0
    session_expiry_s: int = 0
    manual_ack: bool = False
    retain_as_published: bool = False
    retain_check_prefixes: tuple[str, ...] = ()
    receive_maximum: int | None = None


@dataclass(frozen=True)
class ConnectInfo:
    """What the CONNACK told us. ``receive_maximum`` is the broker's MQTT 5 Receive Maximum, or
    ``max_inflight`` when the broker did not say; ``inflight_window`` is the smaller of the two and
    is the most unacknowledged QoS>0 publishes :meth:`MqttConnection.publish` allows."""

    url: BrokerUrl
    receive_maximum: int
    session_present: bool
    protocol: str
    inflight_window: int


@dataclass(frozen=True)
class Message:
    """An incoming PUBLISH. ``properties`` holds MQTT 5 properties by snake_case name
    (``user_properties`` as a list of pairs, ``message_expiry_interval``, ``content_type``, ...)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict[str, Any] = field(default_factory=dict)
    mid: int = 0


MessageHandler = Callable[[Message], None]
AttemptFailedHandler = Callable[[BrokerUrl, BaseException, float], None]


