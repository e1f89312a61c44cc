"""paho-mqtt adapter: one MQTT session as an asyncio object. This package is the only place in
bridge/ and gateway/ that imports paho.

Threading model: paho runs its network loop in its own thread (``loop_start``). Every paho
callback only converts its arguments to plain values and hands them to the asyncio loop with
``loop.call_soon_threadsafe`` (FIFO, so order is preserved); futures, the ``on_message`` callback
and all bookkeeping run on the event loop. The blocking TCP/TLS connect runs in a worker thread.

One :class:`MqttConnection` is one session. A fresh paho ``Client`` is built for every connection
and never reconnects (``reconnect_on_failure=False``): paho would otherwise replay its RAM queue
after a reconnect, while in this project the disk buffer upstream is the source of truth. paho's
own queue is bounded to ``max_inflight`` messages; a publish beyond that raises
:class:`~bridge.mqtt.errors.UplinkBusy` instead of queueing in RAM.

Delivery semantics of :meth:`MqttConnection.publish`: the returned future resolves when QoS 1/2 is
acknowledged (PUBACK/PUBCOMP; an MQTT 5 failure reason code fails it with
:class:`~bridge.mqtt.errors.PublishRejected`) or, for QoS 0, when the packet was written to the socket.
When the link drops every pending future fails with :class:`~bridge.mqtt.errors.ConnectionLost`.

Retained messages on MQTT 3.1.1: a broker delivers a message that was published retained to
clients already subscribed *without* the retain flag, so it looks live. For topics listed in
``ClientSettings.retain_check_prefixes`` such a message waits for a retain check: SUBSCRIBE to its
exact topic, then UNSUBSCRIBE. The broker sends the topic's retained message, flagged, between the
SUBACK and the UNSUBACK (brokers handle one client's packets in order), and it reaches
``on_message`` first; the unflagged copy follows. The consumer (e.g. the command router) thus sees
the retained copy before the live one and can refuse both. A copy identical to one being checked
(the check's own subscription overlaps) is dropped. If the link drops before the check completes
the message is handed on flagged as retained (it could not be shown not to be). With MQTT 5,
``retain_as_published`` keeps the flag and no check is needed.

Errors: nothing paho raises, and no ``OSError``/``ssl`` error of connecting, leaves this package; they
become :mod:`bridge.mqtt.errors` classes (connect failures :class:`~bridge.mqtt.errors.ConnectFailed`,
unusable settings, topics or filters :class:`~bridge.mqtt.errors.PermanentBridgeError`).

Modules: :mod:`.session` (:class:`MqttConnection`: open, publish, subscribe, close),
:mod:`.paho_client` (paho's client: built, connected, sending; its errors turned into ours),
:mod:`.callbacks` (the thread boundary), :mod:`.bookkeeping` (CONNACK, pending acknowledgements,
SUBACK waiters, the session's end; on the loop), :mod:`.retain_check` (delivery to the consumer).
"""

from bridge.mqtt.connection.session import MqttConnection

__all__ = ["MqttConnection"]
