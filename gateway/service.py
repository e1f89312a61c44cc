"""Wiring only: build every stage from the config, then run them under one task group.

Start order: buffer (fail fast on a bad disk) -> uplink (the sink side) -> local broker (the
source) -> processing. Stop order is the reverse for sources: the broker stops taking messages,
the processor drains what was queued and flushes the open batch to disk, then the uplink waits
for in-flight acks, says ``offline`` and disconnects, and the buffer closes.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.errors import BridgeError
from bridge.mqtt.types import ClientSettings, TlsSettings
from bridge.protocol.topics import CloudTopics
from bridge.uplink.downlink import CommandLimits, DownlinkRouter
from bridge.uplink.forwarder import DrainPolicy, Forwarder, LanePolicy
from bridge.uplink.link import UplinkLink
from bridge.uplink.store import Record
from gateway.config import GatewayConfig, Secrets, split_host_port
from gateway.control.answered import AnsweredCommands
from gateway.control.commands import CommandRouter
from gateway.control.config_push import ConfigPusher, PushedConfigFile
from gateway.errors import GatewayError
from gateway.observe.accounting import INGEST_OVERFLOW, REJECTED_BY_BROKER, Accounting
from gateway.observe.latency import LatencyHistogram
from gateway.observe.stats import SnapshotBoard, publish_periodically, refresh_periodically
from gateway.observe.status import write_periodically
from gateway.process.batcher import Batcher
from gateway.process.clock import ClockGuard
from gateway.process.decode import Decoder
from gateway.process.pipeline import Pipeline
from gateway.process.processor import Processor
from gateway.process.rejects import RejectLog
from gateway.process.rules.engine import RuleEngine
from gateway.source.access import FORGED_RESPONSE, AclPolicy, Denials, pattern_as_filter
from gateway.source.broker import EmbeddedBroker, ListenerTls
from gateway.source.credentials import Changes, CredentialStore
from gateway.source.external import ExternalSource
from gateway.source.identity import Gatekeeper
from gateway.source.ingest import Ingest
from gateway.source.pki import Pki
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.lanes import LaneWriter, drop_counter

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup
    from taskgroup import TaskGroup

log = logging.getLogger(__name__)


def uplink_settings(cfg: GatewayConfig, secrets: Secrets) -> ClientSettings:
    up = cfg.uplink
    tls = None
    if up.tls is not None:
        key_pw = secrets.tls_key_password.get_secret_value() if secrets.tls_key_password else None
        tls = TlsSettings(
            ca_file=str(up.tls.ca_file) if up.tls.ca_file else None,
            cert_file=str(up.tls.cert_file) if up.tls.cert_file else None,
            key_file=str(up.tls.key_file) if up.tls.key_file else None,
            key_password=key_pw,
            insecure=up.tls.insecure,
        )
    return ClientSettings(
        client_id=up.client_id or f"edge-{cfg.gateway.id}",
        protocol=up.protocol,
        keepalive_s=up.keepalive_s,
        username=up.username,
        password=secrets.uplink_password.get_secret_value() if secrets.uplink_password else None,
        tls=tls,
        max_inflight=up.max_inflight + up.control_max_inflight,
        connect_timeout_s=up.connect_timeout_s,
        # a command published retained is recognised and never executed: MQTT 5 keeps the flag on
        # live delivery when asked to; on MQTT 3.1.1 each live command waits for a retain check
        retain_as_published=True,
        retain_check_prefixes=(f"{CloudTopics(cfg.gateway.id, cfg.topics.cloud_prefix).prefix}/commands/",),
    )


def acl_policy(cfg: GatewayConfig) -> AclPolicy:
    """``[local_broker.auth.acl]``, or by default each device's own topics of ``[topics]``: publish
    telemetry, per-metric telemetry, events and responses; subscribe to its commands."""
    acl, t = cfg.local_broker.auth.acl, cfg.topics
    publish = acl.publish if acl.publish is not None else [
        pattern_as_filter(p) for p in (t.telemetry, t.telemetry_metric, t.events, t.responses)]
    subscribe = acl.subscribe if acl.subscribe is not None else [pattern_as_filter(t.commands, open_end=True)]
    return AclPolicy(tuple(publish), tuple(subscribe))


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one operational error (GatewayError or BridgeError) a task group failed with, so the CLI
    can report it in one line; any other failure (a bug) stays the whole group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1 and isinstance(leaves[0], (GatewayError, BridgeError)):
        return leaves[0]
    return group


class GatewayService:
    def __init__(self, cfg: GatewayConfig, secrets: Secrets) -> None:
        self.cfg = cfg
        self.topics = CloudTopics(cfg.gateway.id, cfg.topics.cloud_prefix)
        self.alert_latency = LatencyHistogram()  # an alert raised here -> the cloud broker's PUBACK, seconds
        self._offline_since: float | None = time.monotonic()  # the uplink is down until it first connects
        self.accounting = acc = Accounting()
        self.rejects = RejectLog(cfg.decode.keep_last_rejects)
        self.buffer = DiskBuffer(cfg.buffer_dir, {
            "telemetry": Budget(cfg.buffer.telemetry.max_bytes, cfg.buffer.telemetry.max_age_s),
            "control": Budget(cfg.buffer.control.max_bytes, cfg.buffer.control.max_age_s),
        }, sync=cfg.buffer.sync, min_free_bytes=cfg.buffer.min_free_bytes,
            write_behind_s=cfg.buffer.write_behind_s, on_dropped=drop_counter(acc))
        self.forwarder = Forwarder(
            self.buffer,
            {"control": LanePolicy(cfg.uplink.control_qos, cfg.uplink.control_max_inflight),
             "telemetry": LanePolicy(cfg.uplink.telemetry_qos, cfg.uplink.max_inflight)},
            on_delivered=self._delivered,
            on_rejected=self._rejected,
            drain=DrainPolicy(cfg.uplink.backlog_per_live, cfg.uplink.max_bytes_per_s,
                              burst_bytes=max(65536, cfg.batch.max_bytes),
                              max_loop_lag_s=cfg.uplink.drain_max_loop_lag_ms / 1000),
        )
        self.lanes = LaneWriter(self.buffer, self.topics, acc, compression=cfg.batch.compression,
                                level=cfg.batch.level, on_written=self.forwarder.wake)
        self.batcher = Batcher(cfg.batch.max_count, cfg.batch.max_bytes, cfg.batch.max_age_s)
        self.clock = ClockGuard(cfg.clock.floor_date, jump_s=cfg.clock.jump_s, sync_file=cfg.clock.sync_file)
        self.decoder = Decoder(cfg.topics, cfg.decode, self.clock)
        self.rules = RuleEngine(list(cfg.rules))
        self.answered = AnsweredCommands(cfg.gateway.data_dir / "commands-answered.jsonl")
        self.commands = CommandRouter(
            cfg.downlink, cfg.topics.commands, deliver=self._deliver_local, answer=self.lanes.write_control,
            has_subscriber=self._has_subscriber if cfg.local_broker.mode == "embedded" else None,
            answered=self.answered,
        )
        self.pipeline = Pipeline(self.decoder, self.rules, self.batcher, acc, self.rejects,
                                 on_batch=self.lanes.write_batch, on_control=self.lanes.write_control,
                                 on_response=self.commands.device_response)
        self.ingest = Ingest(cfg.local_broker.ingest_queue_max, self._ingest_overflow, self.decoder.is_control)
        self.processor = Processor(self.ingest, self.pipeline, self.lanes, self.accounting, self.clock)
        self.config_pusher = ConfigPusher(
            PushedConfigFile(cfg.pushed_config_file), file_rules=list(cfg.rules), file_batch=cfg.batch,
            rules=self.rules, batcher=self.batcher, encoding=self.lanes,
            write_batch=self.lanes.write_batch, on_control=self.lanes.write_control,
        )
        self.downlink = DownlinkRouter(
            self.topics, CommandLimits(cfg.downlink.max_command_bytes), clock=time.time,
            on_command=self.commands.handle if cfg.downlink.commands else None,
            on_config=self.config_pusher.on_config if cfg.downlink.config_push else None,
        )
        self.link = UplinkLink(
            cfg.uplink.urls, uplink_settings(cfg, secrets),
            DecorrelatedJitter(cfg.uplink.backoff_base_s, cfg.uplink.backoff_cap_s),
            self.forwarder, self.topics.status, ack_timeout_s=cfg.uplink.ack_timeout_s,
            subscriptions=self.downlink.subscriptions(), on_message=self.downlink,
            on_state=lambda state, _url: self._link_state(state == "connected"),
        )
        self.embedded: EmbeddedBroker | None = None
        self.external: ExternalSource | None = None
        self.denials = Denials()
        self.commands.on_forged = lambda device, detail: self.denials.deny(FORGED_RESPONSE, device, detail)
        self.credentials: CredentialStore | None = None
        self.reload_credentials = asyncio.Event()  # set on SIGHUP
        lb = cfg.local_broker
        if lb.mode == "embedded":
            host, port = split_host_port(lb.listen)
            gate = self._gatekeeper()
            self.embedded = EmbeddedBroker(host, port, on_message=self.ingest.offer,
                                           max_connections=lb.max_connections, plain=lb.plain,
                                           tls=self._listener_tls(), gate=gate, denials=self.denials,
                                           max_denied_publishes=lb.auth.max_denied_publishes)
            self.embedded.on_presence = self.commands.presence_changed
        else:
            local_pw = secrets.local_password.get_secret_value() if secrets.local_password else None
            self.external = ExternalSource(
                lb.url,
                ClientSettings(client_id=lb.client_id or f"edge-{cfg.gateway.id}-ingest", protocol="3.1.1",
                               username=lb.username, password=local_pw, clean_start=False),
                self.decoder.subscriptions(), self.ingest.offer,
            )
        acc.buffered_fn = lambda: self.buffer.readings("telemetry")
        acc.pending_fn = lambda: len(self.batcher)
        acc.restored_fn = lambda: self.buffer.restored_readings
        self.board = SnapshotBoard()  # the snapshot other threads (the metrics endpoint) may read
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ access control

    def _gatekeeper(self) -> Gatekeeper | None:
        """Load the credentials (a bad file raises CredentialsError: the gateway does not start)."""
        auth = self.cfg.local_broker.auth
        if auth.mode == "none":
            return None  # loopback only, or allow_anonymous_lan (warned about by check and run)
        self.credentials = store = CredentialStore(
            self.cfg.password_file if auth.passwords else None,
            Pki(self.cfg.pki_dir).revoked_file if auth.certificates else None)
        store.load()
        return Gatekeeper(auth.mode, acl_policy(self.cfg), store.verifier, auth.client_id, store.revoked)

    def _listener_tls(self) -> ListenerTls | None:
        tls = self.cfg.local_broker.tls
        if tls is None:
            return None
        pki = Pki(self.cfg.pki_dir)
        host, port = split_host_port(tls.listen)
        ca = tls.ca_file or (pki.ca_file if self.cfg.local_broker.auth.certificates else None)
        return ListenerTls(host, port, tls.cert_file or pki.server_cert, tls.key_file or pki.server_key, ca,
                           tls.require_client_cert, tls.min_version)

    def _credentials_changed(self, changes: Changes) -> None:
        if self.embedded is None or self.credentials is None:
            return
        gate = self.embedded.gate
        if gate is not None:
            gate.revoked = self.credentials.revoked
        kicked = self.embedded.disconnect(changes.removed, changes.revoked)
        if kicked:
            log.warning("disconnected %d client(s) whose password was removed or certificate revoked", kicked)

    def security_snapshot(self) -> dict[str, Any]:
        store = self.credentials
        return {"auth": self.cfg.local_broker.auth.mode, "denied": dict(self.denials.counts),
                "authenticated_connects": self.embedded.authenticated_connects if self.embedded else 0,
                "devices_with_password": len(store.verifier) if store else 0,
                "revoked_certificates": len(store.revoked) if store else 0,
                "credential_reloads": store.reloads if store else 0,
                "credential_reload_errors": store.reload_errors if store else 0}

    # ------------------------------------------------------------------ callbacks

    def _ingest_overflow(self, topic: str) -> None:
        self.accounting.readings_in += 1
        self.accounting.drop(INGEST_OVERFLOW)
        self.rejects.add(topic, INGEST_OVERFLOW, "ingest queue full")

    async def _deliver_local(self, topic: str, payload: bytes) -> None:
        if self.embedded is not None:
            await self.embedded.publish(topic, payload, qos=1)
        else:
            assert self.external is not None
            await self.external.publish(topic, payload, qos=1)

    def _has_subscriber(self, topic: str, device_level: int | None) -> bool:
        return self.embedded is not None and self.embedded.has_subscriber(topic, device_level)

    def _link_state(self, up: bool) -> None:
        self.buffer.set_link_up(up)
        self._offline_since = None if up else time.monotonic()

    def _offline_s(self) -> float:
        """How long the uplink has been down (since start when it never came up); 0 while up."""
        return 0.0 if self._offline_since is None else round(time.monotonic() - self._offline_since, 3)

    def _delivered(self, rec: Record, size: int) -> None:
        acc = self.accounting
        if rec.topic == self.topics.alerts:  # raised on the gateway -> the cloud's PUBACK
            self.alert_latency.observe(time.time() - rec.created_ms / 1000.0)
        if rec.lane == "telemetry":
            acc.delivered += rec.readings
            acc.batches_delivered += 1
            acc.bytes_up_telemetry += size
        else:
            acc.control_delivered += 1
            acc.bytes_up_control += size

    def _rejected(self, rec: Record, why: str) -> None:
        log.error("record %s dropped: %s", rec.key, why)
        if rec.lane == "telemetry":
            self.accounting.drop(REJECTED_BY_BROKER, rec.readings)
        else:
            self.accounting.control_dropped[REJECTED_BY_BROKER] += 1

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        buf = self.buffer
        return {
            "gateway": self.cfg.gateway.id,
            "accounting": self.accounting.snapshot(),
            "rejects": dict(self.rejects.counts),
            "buffer": {lane: {"records": buf.depth(lane), "bytes": buf.bytes_used(lane),
                              "readings": buf.readings(lane)} for lane in ("control", "telemetry")},
            "disk": {"full_events": buf.disk_full_events, "control_held_in_memory": self.lanes.held_control,
                     "unclean_start": buf.unclean_start, "unclean_starts": buf.unclean_starts,
                     "skipped_seqs": {lane: list(r) for lane, r in buf.skipped_seqs.items()},
                     "stream": buf.stream, "new_stream_reason": buf.new_stream_reason},
            "uplink": {"connected": self.link.connected, "endpoint": self.link.active_url,
                       "connects": self.link.connects, "watchdog_trips": self.link.watchdog_trips,
                       "last_error": self.link.last_error, "previous_error": self.link.previous_error,
                       "drain": self._drain_state(), "offline_s": self._offline_s()},
            "budget": {lane: {"max_bytes": b.max_bytes, "max_age_s": b.max_age_s}
                       for lane, b in (("control", self.cfg.buffer.control), ("telemetry", self.cfg.buffer.telemetry))},
            "connected_clients": len(self.embedded.connected_clients()) if self.embedded else None,
            "alert_latency": self.alert_latency.snapshot(),
            "ingest_queue": len(self.ingest),
            "commands": {**self.commands.snapshot(), "cleared": self.downlink.cleared},
            "internal_errors": self.processor.internal_errors + (self.embedded.hook_errors if self.embedded else 0),
            "config_version": self.config_pusher.version,
            "config_push": self.config_pusher.snapshot(),
            "security": self.security_snapshot(),
            "ready": self.readiness(),
            "clock": self.clock.snapshot(),
        }

    def readiness(self) -> dict[str, bool]:
        """What /readyz requires: the local broker listening (embedded) or connected (external), and
        the buffer open. The uplink is reported by /readyz but not required (the buffer covers it)."""
        local = self.embedded.listening if self.embedded is not None else (
            self.external is not None and self.external.connection is not None)
        return {"local_broker": local, "buffer": self.buffer.is_open}

    def status(self) -> dict[str, Any]:
        """The snapshot plus what only a local operator needs: who is connected, what was rejected."""
        return {**self.snapshot(),
                "connected_devices": self.embedded.connected_clients() if self.embedded is not None else None,
                "last_rejects": self.rejects.recent()}

    def _drain_state(self) -> dict[str, Any]:
        """The backlog and how fast it drains: ``eta_s`` is the time to empty the telemetry
        lane at the backlog rate of the last 10 s (None while nothing drains)."""
        backlog = self.buffer.readings("telemetry")
        rate = self.forwarder.backlog_rate.rate()
        return {"backlog_readings": backlog, "rate_readings_s": round(rate, 1),
                "eta_s": round(backlog / rate, 1) if rate > 0 and backlog else None}

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        self.buffer.open()
        self.answered.open()
        if self.cfg.downlink.config_push:
            self.config_pusher.load_persisted()  # before anything is processed
        uplink_stop, source_stop, proc_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        try:
            async with TaskGroup() as tg:
                tg.create_task(self.link.run(uplink_stop), name="uplink")
                tg.create_task(publish_periodically(
                    self.snapshot, lambda b: self.link.publish_now(self.topics.stats, b),
                    self.cfg.uplink.stats_interval_s, uplink_stop), name="stats")
                source = None
                if self.embedded is not None:
                    await self.embedded.start()
                    if self.credentials is not None:
                        tg.create_task(self.credentials.watch(
                            source_stop, self.cfg.local_broker.auth.reload_interval_s, self.reload_credentials,
                            self._credentials_changed), name="credentials")
                else:
                    assert self.external is not None
                    source = tg.create_task(self.external.run(source_stop), name="local-source")
                proc = tg.create_task(self.processor.run(proc_stop), name="processor")
                commands = tg.create_task(self.commands.run(source_stop), name="commands")
                tg.create_task(refresh_periodically(self.board, self.snapshot, self.cfg.metrics.refresh_s,
                                                    uplink_stop), name="snapshot")
                tg.create_task(write_periodically(self.cfg.status_file, self.status, self.cfg.status.interval_s,
                                                  uplink_stop), name="status-file")
                self.started.set()
                log.info("gateway %s running", self.cfg.gateway.id)
                await stop.wait()
                log.info("stopping: local broker first, then flush, then uplink")
                if self.embedded is not None:
                    await self.embedded.stop()
                source_stop.set()
                if source is not None:
                    await source
                await commands
                proc_stop.set()
                await proc
                uplink_stop.set()
        except BaseExceptionGroup as group:
            raise sole_error(group) from None
        finally:
            self.answered.close()
            self.buffer.close()
