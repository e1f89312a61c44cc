"""amqtt adapter: the embedded local broker and its in-process hand-over to ingest.

This package is the only place that imports amqtt. The broker runs on the gateway's event loop
with an explicit plugin set (our access plugin, or anonymous auth, and our presence hook: no
default loggers, no $SYS). Messages reach the gateway from the broker's own broadcast step
(:meth:`.access_broker.GatewayBroker._broadcast_message`), after the PUBLISH was accepted and
checked, inside the sending client's loop (no plugin event, no task per message). The callback
given to :class:`EmbeddedBroker` must therefore never block: the ingest stage puts into a bounded
queue and counts overflow.

Modules: :mod:`.embedded` (the broker the gateway uses: start, stop, listeners, queries),
:mod:`.listeners` (addresses, TLS listener settings), :mod:`.plugins` (presence hook, access plugin),
:mod:`.guard` (per-connection identity and ACL checks), :mod:`.access_broker` (amqtt's ``Broker``
with access control where amqtt has no hook: private overrides), :mod:`.shutdown` (stopping
without losing acknowledged messages), :mod:`.failures` (amqtt's errors and log noise).
"""

from gateway.source.broker.embedded import EmbeddedBroker
from gateway.source.broker.listeners import BrokerAddress, ListenerTls
from gateway.source.broker.plugins import MessageCallback, PresenceCallback

__all__ = ["BrokerAddress", "EmbeddedBroker", "ListenerTls", "MessageCallback", "PresenceCallback"]
