"""paho's client for one session: building it from :class:`ClientSettings`, connecting it, and
sending PUBLISH/SUBSCRIBE/UNSUBSCRIBE with paho's return codes and exceptions turned into
:mod:`bridge.mqtt.errors`."""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.mqtt.errors import ConnectionLost, PermanentBridgeError, TransientBridgeError, UplinkBusy
from bridge.mqtt.types import ClientSettings, TlsSettings
from bridge.mqtt.urls import BrokerUrl

# MQTT 5 properties exposed on Message.properties / accepted by publish(), by our snake_case name.
_PROPERTY_NAMES = {
    "message_expiry_interval": "MessageExpiryInterval",
    "content_type": "ContentType",
    "payload_format_indicator": "PayloadFormatIndicator",
    "response_topic": "ResponseTopic",
    "correlation_data": "CorrelationData",
    "user_properties": "UserProperty",
}


def make_client(url: BrokerUrl, s: ClientSettings) -> mqtt.Client:
    """A paho client that never reconnects and queues at most ``max_inflight`` messages in RAM.
    Raises ``ssl.SSLError``, ``OSError`` or ``ValueError`` for unusable settings."""
    v5 = s.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=s.client_id,
        clean_session=None if v5 else s.clean_start,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        reconnect_on_failure=False,
        manual_ack=s.manual_ack,
    )
    username = s.username if s.username is not None else url.username
    password = s.password if s.password is not None else url.password
    if username is not None:
        client.username_pw_set(username, password)
    tls = s.tls or (TlsSettings() if url.tls else None)
    if tls is not None:
        client.tls_set(
            ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
            # "" rather than None: with None OpenSSL would prompt on the terminal for the
            # password of an encrypted key, hanging a daemon; "" fails with an error instead.
            keyfile_password=tls.key_password if tls.key_password is not None else "",
            cert_reqs=ssl.CERT_NONE if tls.insecure else ssl.CERT_REQUIRED,
        )
    if s.will is not None:
        client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
    client.max_inflight_messages_set(s.max_inflight)
    client.max_queued_messages_set(s.max_inflight)
    client.connect_timeout = s.connect_timeout_s
    return client


def connect(client: mqtt.Client, url: BrokerUrl, s: ClientSettings) -> None:
    """Blocking: TCP (+TLS) connect and send CONNECT. Raises ``OSError`` or ``ValueError``."""
    if s.protocol == "5":
        props = new_properties(PacketTypes.CONNECT)
        if s.session_expiry_s > 0:
            props.SessionExpiryInterval = s.session_expiry_s
        if s.receive_maximum is not None:
            props.ReceiveMaximum = s.receive_maximum
        client.connect(url.host, url.port, s.keepalive_s, clean_start=s.clean_start, properties=props)
    else:
        client.connect(url.host, url.port, s.keepalive_s)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        # MQTT packets are small and latency matters more than packet count: without this a
        # response sent right after an incoming PUBACK waits for the peer's delayed ACK (~40 ms).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_publish(client: mqtt.Client, url: BrokerUrl, s: ClientSettings, topic: str, payload: bytes, qos: int,
                 retain: bool, properties: dict[str, Any] | None) -> int:
    """Hand a PUBLISH to paho; return its mid."""
    props = _publish_properties(s, properties)
    try:
        info = client.publish(topic, payload, qos, retain, props)
    except ValueError as err:
        raise PermanentBridgeError(f"cannot publish to {topic!r}: {err}") from err
    if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
        raise UplinkBusy(f"{url}: {s.max_inflight} publishes already unacknowledged")
    if info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
        raise ConnectionLost(f"{url}: not connected ({mqtt.error_string(info.rc)})")
    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
        raise TransientBridgeError(f"{url}: publish failed: {mqtt.error_string(info.rc)}")
    return info.mid


def send_subscribe(client: mqtt.Client, url: BrokerUrl, s: ClientSettings, filters: list[tuple[str, int]]) -> int:
    """Hand a SUBSCRIBE to paho; return its mid."""
    options: list[tuple[str, Any]] = list(filters)
    if s.protocol == "5" and s.retain_as_published:
        options = [(topic, SubscribeOptions(qos=qos, retainAsPublished=True)) for topic, qos in filters]
    try:
        rc, mid = client.subscribe(options)
    except ValueError as err:  # an invalid filter or QoS
        raise PermanentBridgeError(f"{url}: cannot subscribe to {[f for f, _ in filters]}: {err}") from err
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
        raise ConnectionLost(f"{url}: subscribe failed: {mqtt.error_string(rc)}")
    return mid


def send_unsubscribe(client: mqtt.Client, url: BrokerUrl, topics: list[str]) -> int:
    """Hand an UNSUBSCRIBE to paho; return its mid."""
    try:
        rc, mid = client.unsubscribe(topics)
    except ValueError as err:  # an invalid filter
        raise PermanentBridgeError(f"{url}: cannot unsubscribe from {topics}: {err}") from err
    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
        raise ConnectionLost(f"{url}: unsubscribe failed: {mqtt.error_string(rc)}")
    return mid


def new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _publish_properties(s: ClientSettings, properties: dict[str, Any] | None) -> Properties | None:
    if not properties or s.protocol != "5":
        return None
    props = new_properties(PacketTypes.PUBLISH)
    for key, value in properties.items():
        name = _PROPERTY_NAMES.get(key)
        if name is None:
            raise PermanentBridgeError(f"unsupported publish property {key!r}")
        setattr(props, name, list(value) if key == "user_properties" else value)
    return props


def properties_to_dict(props: Properties | None) -> dict[str, Any]:
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for key, name in _PROPERTY_NAMES.items():
        value = getattr(props, name, None)
        if value is not None:
            out[key] = [tuple(pair) for pair in value] if key == "user_properties" else value
    return out


def describe_os_error(err: OSError) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or err}"
    if isinstance(err, socket.timeout):
        return "timed out"
    return err.strerror or str(err) or type(err).__name__
