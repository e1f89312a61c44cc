"""Build every part of the gateway from the config, each given what it calls at construction.

:func:`build_parts` is the one place that knows how the parts connect: the buffer and the
accounting first (everything counts into the accounting), then the uplink's forwarder, the
processing stages, the command and config paths, the uplink link, the local broker side, and
the state view that reads them all. Nothing is linked in after construction. Running them is
:class:`gateway.service.GatewayService`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.mqtt.backoff import DecorrelatedJitter
from bridge.mqtt.types import ClientSettings, TlsSettings
from bridge.protocol.topics import CloudTopics
from bridge.uplink.bulk import BulkPolicy
from bridge.uplink.downlink import CommandLimits, DownlinkRouter
from bridge.uplink.forwarder import DrainPolicy, Forwarder, LanePolicy
from bridge.uplink.link import UplinkLink
from bridge.uplink.store import Record
from gateway.config import GatewayConfig, Secrets
from gateway.control.answered import AnsweredCommands
from gateway.control.commands import CommandRouter
from gateway.control.config_push import ConfigPusher, PushedConfigFile
from gateway.files.device_contract import DeviceFileTopics
from gateway.files.device_handoff import into_uploads, no_uploads
from gateway.files.device_intake import DeviceIntake, Publish
from gateway.files.device_receiver import DeviceReceiver, Limits, OnFile
from gateway.files.device_staging import bytes_under
from gateway.files.download import Downloads
from gateway.files.installed import InstalledLog
from gateway.files.uploads import Uploads
from gateway.observe.accounting import Accounting
from gateway.observe.delivery import DeliveryAccounting
from gateway.observe.state import GatewayState, Outage
from gateway.process.batcher import Batcher
from gateway.process.clock import ClockGuard
from gateway.process.decode import Decoder
from gateway.process.pipeline import Pipeline
from gateway.process.processor import Processor
from gateway.process.rejects import RejectLog
from gateway.process.rules.engine import RuleEngine
from gateway.source.access import FORGED_RESPONSE
from gateway.source.ingest import Ingest
from gateway.source.local import LocalSide, build_local
from gateway.store.buffer import Budget, DiskBuffer
from gateway.store.lanes import LaneWriter, drop_counter


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
        max_inflight=up.max_inflight + up.control_max_inflight + (cfg.files.window if cfg.files.enabled else 0),
        connect_timeout_s=up.connect_timeout_s,
        # a command published retained is recognised and never executed: MQTT 5 keeps the flag on
        # live delivery when asked to; on MQTT 3.1.1 each live command waits for a retain check
        retain_as_published=True,
        retain_check_prefixes=(f"{CloudTopics(cfg.gateway.id, cfg.topics.cloud_prefix).prefix}/commands/",),
    )


def build_buffer(cfg: GatewayConfig, on_dropped: Callable[[Record, str], None]) -> DiskBuffer:
    """The disk buffer; every record it removes without an ack is reported to ``on_dropped``."""
    return DiskBuffer(cfg.buffer_dir, {
        "telemetry": Budget(cfg.buffer.telemetry.max_bytes, cfg.buffer.telemetry.max_age_s),
        "control": Budget(cfg.buffer.control.max_bytes, cfg.buffer.control.max_age_s),
    }, sync=cfg.buffer.sync, min_free_bytes=cfg.buffer.min_free_bytes, write_behind_s=cfg.buffer.write_behind_s,
        on_dropped=on_dropped)


def build_forwarder(cfg: GatewayConfig, buffer: DiskBuffer, delivery: DeliveryAccounting,
                    uploads: Uploads | None = None) -> Forwarder:
    up, files = cfg.uplink, cfg.files
    return Forwarder(
        buffer,
        {"control": LanePolicy(up.control_qos, up.control_max_inflight),
         "telemetry": LanePolicy(up.telemetry_qos, up.max_inflight)},
        on_delivered=delivery.delivered,
        on_rejected=delivery.rejected,
        drain=DrainPolicy(up.backlog_per_live, up.max_bytes_per_s, burst_bytes=max(65536, cfg.batch.max_bytes),
                          max_loop_lag_s=up.drain_max_loop_lag_ms / 1000),
        bulk=uploads.uploader if uploads is not None else None,
        bulk_policy=BulkPolicy(files.window, files.max_bytes_per_s, burst_bytes=max(65536, files.chunk_bytes),
                               item_bytes=files.chunk_bytes + 1024),  # a chunk, its header and topic
    )


def build_link(cfg: GatewayConfig, secrets: Secrets, topics: CloudTopics, forwarder: Forwarder,
               downlink: DownlinkRouter, buffer: DiskBuffer, outage: Outage, batcher: Batcher,
               downloads: Downloads | None = None) -> UplinkLink:
    """The uplink session; its state changes reach the buffer (write-behind only while up), the
    batcher (outage batching only while down), the outage clock and the downloads (which ask for
    what they miss on every connect)."""

    def link_state(state: str, _url: str | None) -> None:
        up = state == "connected"
        buffer.set_link_up(up)
        batcher.set_link_up(up)
        outage.changed(up)
        if downloads is not None:
            downloads.link_changed(up)

    return UplinkLink(
        cfg.uplink.urls, uplink_settings(cfg, secrets),
        DecorrelatedJitter(cfg.uplink.backoff_base_s, cfg.uplink.backoff_cap_s),
        forwarder, topics.status, ack_timeout_s=cfg.uplink.ack_timeout_s,
        subscriptions=downlink.subscriptions(), on_message=downlink, on_state=link_state,
    )


@dataclass(frozen=True)
class Processing:
    """The stages between the local broker and the buffer."""

    batcher: Batcher
    clock: ClockGuard
    decoder: Decoder
    rules: RuleEngine


def build_processing(cfg: GatewayConfig) -> Processing:
    clock = ClockGuard(cfg.clock.floor_date, jump_s=cfg.clock.jump_s, sync_file=cfg.clock.sync_file)
    b = cfg.batch
    batcher = Batcher(b.max_count, b.max_bytes, b.max_age_s, outage_max_age_s=b.outage_max_age_s,
                      outage_max_count=b.outage_max_count)
    return Processing(batcher, clock,
                      Decoder(cfg.topics, cfg.decode, clock), RuleEngine(list(cfg.rules)))


def build_config_pusher(cfg: GatewayConfig, stages: Processing, lanes: LaneWriter) -> ConfigPusher:
    return ConfigPusher(
        PushedConfigFile(cfg.pushed_config_file), file_rules=list(cfg.rules), file_batch=cfg.batch,
        rules=stages.rules, batcher=stages.batcher, encoding=lanes,
        write_batch=lanes.write_batch, on_control=lanes.write_control,
    )


def build_device_intake(cfg: GatewayConfig, publish: Publish, on_file: OnFile) -> DeviceIntake:
    """Device file uploads under ``{files_dir}/devices``; the disk budget counts every file under
    ``files_dir``."""
    f = cfg.files
    limits = Limits(f.enabled and f.device_uploads, f.max_device_file_bytes, f.max_disk_bytes,
                    f.device_upload_timeout_s, f.max_device_files_per_hour)
    receiver = DeviceReceiver(cfg.files_dir / "devices", DeviceFileTopics(cfg.topics), limits, on_file,
                              used_bytes=lambda: transfer_bytes(cfg))
    return DeviceIntake(receiver, publish)


def transfer_bytes(cfg: GatewayConfig, *parts: str) -> int:
    """Bytes the file transfers hold on disk (``files.max_disk_bytes`` is for all of them): uploads
    in ``sending/``, downloads in ``incoming/``, device uploads in ``devices/`` (or just ``parts``)."""
    return sum(bytes_under(cfg.files_dir / part) for part in parts or ("sending", "incoming", "devices"))


def build_downloads(cfg: GatewayConfig, lanes: LaneWriter) -> Downloads | None:
    f = cfg.files
    if not f.enabled:
        return None
    return Downloads(cfg.files_dir / "incoming", cfg.inbox_dir, InstalledLog(cfg.files_dir / "installed.json"),
                     lanes.write_control, max_file_bytes=f.max_file_bytes, max_disk_bytes=f.max_disk_bytes,
                     stall_s=f.stall_s, timeout_s=f.download_timeout_s,
                     other_bytes=lambda: transfer_bytes(cfg, "sending", "devices"))


@dataclass(frozen=True)
class Parts:
    cfg: GatewayConfig
    topics: CloudTopics
    accounting: Accounting
    rejects: RejectLog
    buffer: DiskBuffer
    forwarder: Forwarder
    lanes: LaneWriter
    stages: Processing
    answered: AnsweredCommands
    commands: CommandRouter
    ingest: Ingest
    processor: Processor
    config_pusher: ConfigPusher
    downlink: DownlinkRouter
    link: UplinkLink
    local: LocalSide
    state: GatewayState
    uploads: Uploads | None
    device_files: DeviceIntake
    downloads: Downloads | None = None


def build_parts(cfg: GatewayConfig, secrets: Secrets) -> Parts:
    """Every part, in dependency order. A bad credentials file raises ``CredentialsError``."""
    topics = CloudTopics(cfg.gateway.id, cfg.topics.cloud_prefix)
    stages, rejects = build_processing(cfg), RejectLog(cfg.decode.keep_last_rejects)
    # the accounting reads the buffer's gauges and the buffer reports its drops to the accounting:
    # the gauges are looked up only when read, after the buffer below exists
    acc = Accounting(buffered_fn=lambda: buffer.readings("telemetry"), pending_fn=stages.batcher.__len__,
                     restored_fn=lambda: buffer.restored_readings)
    buffer = build_buffer(cfg, on_dropped=drop_counter(acc))
    delivery = DeliveryAccounting(acc, rejects, topics.alerts)
    # uploads write FileStatus records through the lane writer and wake the forwarder, both built
    # below with uploads as the forwarder's bulk source: they are looked up only when called
    uploads = Uploads(cfg, topics.files, on_status=lambda rec: lanes.write_control(rec),  # noqa: PLW0108
                      wake=lambda: forwarder.wake(),  # noqa: PLW0108
                      other_bytes=lambda: transfer_bytes(cfg, "incoming", "devices")) if cfg.files.enabled else None
    forwarder = build_forwarder(cfg, buffer, delivery, uploads)
    lanes = LaneWriter(buffer, topics, acc, compression=cfg.batch.compression, level=cfg.batch.level,
                       on_written=forwarder.wake)
    ingest = Ingest(cfg.local_broker.ingest_queue_max, delivery.ingest_overflow, stages.decoder.is_control)
    # device file uploads are taken out before ingest (they never reach the decoder) and answered
    # through the local broker (built just below)
    hand_off = no_uploads if uploads is None else into_uploads(uploads.outbox, lambda: uploads.loop)
    device_files = build_device_intake(cfg, lambda topic, payload: local.deliver(topic, payload),  # noqa: PLW0108
                                       hand_off)
    # the command router and the embedded broker need each other: the router delivers through the
    # broker, the broker tells the router when a device subscribes (through this closure: the
    # router is built just below, and the broker calls it only once it runs)
    local = build_local(cfg, secrets, on_message=device_files.route(ingest.offer),
                        on_presence=lambda: commands.presence_changed(),  # noqa: PLW0108
                        subscriptions=stages.decoder.subscriptions() + device_files.topics.subscriptions())
    answered = AnsweredCommands(cfg.gateway.data_dir / "commands-answered.jsonl")
    commands = CommandRouter(
        cfg.downlink, cfg.topics.commands, deliver=local.deliver, answer=lanes.write_control,
        has_subscriber=local.has_subscriber if local.embedded is not None else None, answered=answered,
        on_forged=lambda device, detail: local.denials.deny(FORGED_RESPONSE, device, detail),
    )
    pipeline = Pipeline(stages.decoder, stages.rules, stages.batcher, acc, rejects, on_batch=lanes.write_batch,
                        on_control=lanes.write_control, on_response=commands.device_response)
    processor = Processor(ingest, pipeline, lanes, acc, stages.clock)
    pusher = build_config_pusher(cfg, stages, lanes)
    downloads = build_downloads(cfg, lanes)
    downlink = DownlinkRouter(
        topics, CommandLimits(cfg.downlink.max_command_bytes), clock=time.time,
        on_command=commands.handle if cfg.downlink.commands else None,
        on_config=pusher.on_config if cfg.downlink.config_push else None,
        on_file_receipt=uploads.receipts if uploads is not None else None,
        on_file=downloads.offer if downloads is not None else None,
    )
    outage = Outage()
    link = build_link(cfg, secrets, topics, forwarder, downlink, buffer, outage, stages.batcher, downloads)
    state = GatewayState(cfg=cfg, accounting=acc, delivery=delivery, rejects=rejects, buffer=buffer, lanes=lanes,
                         link=link, forwarder=forwarder, outage=outage, local=local, ingest=ingest,
                         processor=processor, commands=commands, downlink=downlink, config_pusher=pusher,
                         clock=stages.clock, uploads=uploads, device_files=device_files, downloads=downloads)
    return Parts(cfg=cfg, topics=topics, accounting=acc, rejects=rejects, buffer=buffer, forwarder=forwarder,
                 lanes=lanes, stages=stages, answered=answered, commands=commands, ingest=ingest,
                 processor=processor, config_pusher=pusher, downlink=downlink, link=link, local=local, state=state,
                 uploads=uploads, device_files=device_files, downloads=downloads)
