"""prometheus-client exposition of the gateway's counters.

The HTTP endpoint runs in prometheus-client's own thread. It never touches the gateway's objects:
it reads the frozen snapshot the event loop last published on a :class:`~gateway.observe.stats.SnapshotBoard`
(no per-reading metric calls on the hot path either)."""

from __future__ import annotations

import base64
import errno
import hmac
import json
import platform
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from pydantic import SecretStr

from bridge.uplink.downlink import REJECT_REASONS as COMMAND_REJECTS
from gateway.config import MetricsSection, split_host_port
from gateway.control.commands import GATEWAY_STATUSES, RETAINED_WITHOUT_ID
from gateway.errors import AddressInUse, MetricsError
from gateway.observe.accounting import CONTROL_DROP_REASONS, DROP_REASONS
from gateway.observe.metrics_files import FILE_LABELS, Spec, file_specs
from gateway.observe.snapshot import (
    ClockBlock,
    CommandsBlock,
    HistogramBlock,
    SecurityBlock,
    Snapshot,
)
from gateway.observe.stats import SnapshotBoard
from gateway.process.decode import REJECT_REASONS as DECODE_REJECTS
from gateway.process.rules.engine import FILTER_REASONS, RULE_DROP_REASONS
from gateway.source.access import DENIAL_REASONS

Latest = Callable[[], tuple[float, Snapshot] | None]
Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily | InfoMetricFamily
LANES = ("control", "telemetry")
# every label value a counter can take, exported at 0 before its first event (so increase() sees it)
READING_DROP_REASONS = (*DECODE_REJECTS, *DROP_REASONS, *RULE_DROP_REASONS)
KNOWN_LABELS: dict[str, tuple[str, ...]] = {
    "edge_readings_filtered": FILTER_REASONS,
    "edge_readings_dropped": READING_DROP_REASONS,
    "edge_control_records_dropped": CONTROL_DROP_REASONS,
    "edge_rejected_messages": DECODE_REJECTS,
    "edge_commands_answered": GATEWAY_STATUSES,
    "edge_commands_rejected": COMMAND_REJECTS,
    "edge_commands_ignored": (RETAINED_WITHOUT_ID,),
    "edge_security_denials": DENIAL_REASONS,
    "edge_config_pushes": ("applied", "rejected", "stale"),
    **FILE_LABELS,
}


def build_version() -> str:
    try:
        return version("edge-mqtt-gateway")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _by_label(name: str, help_text: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    """A counter family with every known value of ``label`` at 0 plus whatever else was counted."""
    fam = CounterMetricFamily(name, help_text, labels=[label])
    for value in sorted({*KNOWN_LABELS.get(name, ()), *counts}):
        fam.add_metric([value], counts.get(value, 0))
    return fam


def _from_spec(spec: Spec) -> Family:
    if isinstance(spec.value, Mapping):
        return _by_label(spec.name, spec.help, "reason", spec.value)
    return (_counter if spec.kind == "counter" else _gauge)(spec.name, spec.help, spec.value)


def _per_lane(fam: CounterMetricFamily | GaugeMetricFamily,
              values: Mapping[str, float]) -> CounterMetricFamily | GaugeMetricFamily:
    for lane in LANES:
        fam.add_metric([lane], values[lane])
    return fam


def _histogram(name: str, help_text: str, h: HistogramBlock) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, help_text, buckets=[(str(b), float(n)) for b, n in h.buckets],
                                 sum_value=h.sum_s)


class SnapshotCollector(Collector):
    """Turns the latest published snapshot (see gateway.observe.stats) into Prometheus metric families.
    Nothing but the build info is served before the gateway published its first snapshot."""

    def __init__(self, latest: Latest) -> None:
        self._latest = latest
        self._version = build_version()

    def collect(self) -> Iterator[Family]:
        info = InfoMetricFamily("edge_build", "the gateway's version and the Python running it")
        info.add_metric([], {"version": self._version, "python": platform.python_version()})
        yield info
        latest = self._latest()
        if latest is None:
            return
        built, s = latest
        yield _gauge("edge_snapshot_age_seconds", "Age of the snapshot these figures come from (the event loop "
                     "publishes one every metrics.refresh_s; a growing age means the loop is stuck)",
                     max(0.0, time.time() - built))
        yield from _reading_metrics(s)
        yield from _buffer_metrics(s)
        yield from _uplink_metrics(s)
        yield from _command_metrics(s.commands)
        yield from _config_metrics(s)
        yield from _security_metrics(s.security)
        yield from _clock_metrics(s.clock)
        for spec in file_specs(s):
            yield _from_spec(spec)
        clients = s.connected_clients
        if clients is not None:  # embedded broker only: an external broker's clients are not visible here
            yield _gauge("edge_connected_clients", "Local MQTT clients (devices and local tools) connected to the "
                         "embedded broker", clients)
        yield _counter("edge_internal_errors", "Unexpected errors in processing (a bug: see the log)",
                       s.internal_errors)


def _reading_metrics(s: Snapshot) -> Iterator[Family]:
    acc = s.accounting
    yield _counter("edge_messages_received", "MQTT messages taken from the local broker", acc.messages_in)
    yield _counter("edge_readings_received", "Readings that entered the gateway (including rejected messages, "
                   "one each)", acc.readings_in)
    yield _counter("edge_readings_restored", "Readings an earlier run left on disk, taken over at start",
                   acc.restored)
    yield _counter("edge_readings_delivered", "Readings in batches the cloud broker acknowledged",
                   acc.delivered)
    yield _by_label("edge_readings_filtered", "Readings a filter rule left out on purpose, by reason", "reason",
                    acc.filtered)
    yield _by_label("edge_readings_dropped", "Readings lost: rejected input, overflow, expiry, disk errors, "
                    "by reason", "reason", acc.dropped)
    yield _gauge("edge_readings_buffered", "Readings on disk waiting for the cloud broker's acknowledgement",
                 acc.buffered)
    yield _gauge("edge_readings_pending", "Readings in the open batch in memory", acc.pending)
    yield _by_label("edge_rejected_messages", "Local messages rejected by the decoder, by reason", "reason",
                    s.rejects)
    kinds = CounterMetricFamily("edge_control_records", "Control records raised (alert, device event, device "
                                "response)", labels=["kind"])
    for kind, count in (("alert", acc.alerts), ("event", acc.events), ("response", acc.responses)):
        kinds.add_metric([kind], count)
    yield kinds
    yield _by_label("edge_control_records_dropped", "Control records lost, by reason", "reason",
                    acc.control_dropped)
    yield _gauge("edge_ingest_queue_messages", "Messages waiting in memory between the broker and the pipeline",
                 s.ingest_queue)


def _buffer_metrics(s: Snapshot) -> Iterator[Family]:
    acc, buf = s.accounting, s.buffer
    yield _per_lane(CounterMetricFamily("edge_records_written", "Records written to the disk buffer (telemetry "
                                        "batches, control records)", labels=["lane"]),
                    {"telemetry": acc.batches_written, "control": acc.control_written})
    yield _per_lane(CounterMetricFamily("edge_records_delivered", "Records the cloud broker acknowledged",
                                        labels=["lane"]),
                    {"telemetry": acc.batches_delivered, "control": acc.control_delivered})
    yield _per_lane(CounterMetricFamily("edge_uplink_sent_bytes", "Payload bytes the cloud broker acknowledged",
                                        labels=["lane"]),
                    {"telemetry": acc.bytes_up_telemetry, "control": acc.bytes_up_control})
    yield _per_lane(GaugeMetricFamily("edge_buffer_records", "Records waiting on disk", labels=["lane"]),
                    {lane: buf[lane].records for lane in LANES})
    yield _per_lane(GaugeMetricFamily("edge_buffer_readings", "Readings waiting on disk (the backlog)",
                                      labels=["lane"]), {lane: buf[lane].readings for lane in LANES})
    yield _per_lane(GaugeMetricFamily("edge_buffer_usage_bytes", "Bytes the disk buffer holds", labels=["lane"]),
                    {lane: buf[lane].bytes for lane in LANES})
    yield _per_lane(GaugeMetricFamily("edge_buffer_budget_bytes", "The lane's byte budget (buffer.<lane>.max_bytes): "
                                      "at it, the oldest telemetry is dropped", labels=["lane"]),
                    {lane: s.budget[lane].max_bytes for lane in LANES})
    disk = s.disk
    yield _counter("edge_buffer_disk_full_events", "Buffer writes the disk refused (full)", disk.full_events)
    yield _gauge("edge_buffer_control_held_records", "Control records held in memory until the disk takes them",
                 disk.control_held_in_memory)
    yield _counter("edge_buffer_unclean_starts", "Starts that found the buffer not closed (kill -9, crash, power "
                   "loss), over the life of the buffer", disk.unclean_starts)
    yield _histogram("edge_alert_delivery_seconds", "From an alert raised on the gateway to the cloud broker's "
                     "acknowledgement (includes time spent buffered during an outage)", s.alert_latency)


def _uplink_metrics(s: Snapshot) -> Iterator[Family]:
    up = s.uplink
    yield _gauge("edge_uplink_connected", "1 while the uplink to the cloud broker is connected",
                 1 if up.connected else 0)
    yield _gauge("edge_uplink_offline_seconds", "How long the uplink has been down (since start if it never "
                 "connected); 0 while connected", up.offline_s)
    yield _counter("edge_uplink_connects", "Uplink connections made", up.connects)
    yield _counter("edge_uplink_watchdog_trips", "Links torn down as dead by the progress watchdog",
                   up.watchdog_trips)
    endpoint = GaugeMetricFamily("edge_uplink_endpoint", "1 for the cloud endpoint in use", labels=["url"])
    if up.endpoint:
        endpoint.add_metric([up.endpoint], 1)
    yield endpoint
    drain = up.drain
    yield _gauge("edge_backlog_drain_readings_per_second", "Backlog readings acknowledged per second (last 10 s)",
                 drain.rate_readings_s)
    yield _gauge("edge_backlog_drain_eta_seconds", "Estimated seconds to empty the telemetry backlog at the "
                 "current drain rate (NaN while it does not drain)",
                 drain.eta_s if drain.eta_s is not None else float("nan"))


def _command_metrics(c: CommandsBlock) -> Iterator[Family]:
    for name, help_text in (
            ("received", "Cloud commands received"),
            ("forwarded", "Commands delivered to the local device"),
            ("duplicates", "Commands already held or settled, not delivered or answered again"),
            ("responses_matched", "Device responses matched to a forwarded command"),
            ("responses_unmatched", "Device responses to no known command (sent up without a command name)"),
            ("responses_forged", "Device answers to a command sent to another device (refused)"),
            ("forgotten", "Forwarded commands with no response within downlink.track_responses_s"),
            ("cleared", "Empty (retained-clearing) messages on the command topics, ignored")):
        yield _counter(f"edge_commands_{name}", help_text, getattr(c, name))
    yield _gauge("edge_commands_held", "Commands held for an offline device", c.held)
    yield _by_label("edge_commands_answered", "Commands the gateway answered itself, by status", "status",
                    c.answered)
    yield _by_label("edge_commands_rejected", "Commands rejected, by reason", "reason", c.rejected)
    yield _by_label("edge_commands_ignored", "Command messages not answered at all, by reason", "reason",
                    c.ignored)
    yield _histogram("edge_command_round_trip_seconds", "From a command's arrival on the gateway to its device's "
                     "response", c.round_trip)


def _config_metrics(s: Snapshot) -> Iterator[Family]:
    push = s.config_push
    yield _gauge("edge_config_version", "Pushed config version in force (0 = file config only)", s.config_version)
    yield _by_label("edge_config_pushes", "Pushed config documents by outcome", "status",
                    {"applied": push.applied, "rejected": push.rejected, "stale": push.stale})
    yield _counter("edge_config_load_errors", "Persisted pushed configs that could not be loaded at start",
                   push.load_errors)
    yield _counter("edge_config_cleared", "Empty messages on the config topic (a retained document cleared), ignored",
                   push.cleared)


def _security_metrics(s: SecurityBlock) -> Iterator[Family]:
    yield _by_label("edge_security_denials", "Refused connects, publishes, subscribes and deliveries on the local "
                    "broker, by reason", "reason", s.denied)
    yield _counter("edge_security_authenticated_connects", "Connections admitted with an identity",
                   s.authenticated_connects)
    yield _gauge("edge_security_devices_with_password", "Devices in the password file", s.devices_with_password)
    yield _gauge("edge_security_revoked_certificates", "Serials in the revoked list", s.revoked_certificates)
    yield _counter("edge_security_credential_reloads", "Credential files reloaded", s.credential_reloads)
    yield _counter("edge_security_credential_reload_errors", "Credential file versions refused as invalid (the "
                   "previous ones stayed in force)", s.credential_reload_errors)


def _clock_metrics(c: ClockBlock) -> Iterator[Family]:
    yield _gauge("edge_clock_synced", "1 while the gateway's wall clock is taken as synced (after "
                 "clock.floor_date and, when set, clock.sync_file exists)", 1 if c.synced else 0)
    yield _counter("edge_clock_jumps", "Steps of the wall clock against the monotonic clock beyond clock.jump_s",
                   c.jumps)
    yield _counter("edge_clock_receive_stamped_unsynced_readings", "Readings without a ts stamped with the receive "
                   "time while the clock was not synced", c.receive_stamped_unsynced)
    yield _counter("edge_clock_window_not_judged_readings", "Readings whose ts was kept although the unsynced "
                   "clock would have put it out of window", c.window_not_judged)


def registry_for(board: SnapshotBoard) -> CollectorRegistry:
    """The gateway's figures plus the process (CPU, memory, file descriptors) and Python platform ones."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(board.latest))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def basic_auth(app: Any, username: str, password: str) -> Any:
    """WSGI middleware: answer 401 unless the request carries these basic-auth credentials."""
    expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        given = str(environ.get("HTTP_AUTHORIZATION", ""))
        if hmac.compare_digest(given.encode(), expected.encode()):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="edge-gateway metrics"'),
                                             ("Content-Type", "text/plain")])
        return [b"authentication required\n"]

    return guarded


HEALTH_PATHS = ("/healthz", "/readyz")


def health_app(board: SnapshotBoard, stale_after_s: float) -> Any:
    """WSGI app for the probes, read from ``board`` like the metrics:

    - ``/healthz``: 200 while the event loop keeps refreshing the snapshot (the last refresh is
      less than ``stale_after_s`` old), else 503 (``starting`` before the first one, ``stalled``).
    - ``/readyz``: 200 when healthy, the local broker listening (or, external, connected) and the
      buffer open, else 503. The uplink state is in the body but not required: the buffer covers
      an uplink outage.
    """

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        age = board.age_s()
        latest = board.latest()
        body: dict[str, Any] = {"status": "starting" if age is None else "ok" if age < stale_after_s else "stalled",
                                "snapshot_age_s": None if age is None else round(age, 3)}
        ok = body["status"] == "ok"
        if environ.get("PATH_INFO") == "/readyz":
            snap = latest[1] if latest is not None else None
            if snap is not None:
                body.update(local_broker=snap.ready.local_broker, buffer=snap.ready.buffer)
            body["uplink"] = "connected" if snap is not None and snap.uplink.connected else "disconnected"
            ok = ok and snap is not None and snap.ready.all()
            body["ready"] = ok
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
        return [json.dumps(body).encode() + b"\n"]

    return app


def route(metrics: Any, health: Any) -> Any:
    """The health paths go to ``health`` (never behind basic auth: probes cannot send it), the rest
    to ``metrics``."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        target = health if environ.get("PATH_INFO") in HEALTH_PATHS else metrics
        return target(environ, start_response)

    return app


def serve(cfg: MetricsSection, password: SecretStr | None, board: SnapshotBoard) -> WSGIServer:
    """The /metrics endpoint on ``cfg.listen``, with TLS (``tls_cert_file``/``tls_key_file``, TLS 1.2+)
    and basic auth when configured, and the /healthz and /readyz probes (no auth). Runs in a daemon
    thread and reads only ``board``'s latest frozen snapshot; the returned server's ``shutdown()``
    stops it. A taken address raises :class:`~gateway.errors.AddressInUse`."""
    assert cfg.listen is not None
    registry = registry_for(board)
    host, port = split_host_port(cfg.listen)
    app = make_wsgi_app(registry)
    if cfg.basic_auth_username is not None and password is not None:
        app = basic_auth(app, cfg.basic_auth_username, password.get_secret_value())
    app = route(app, health_app(board, stale_after_s=max(10.0, 5 * cfg.refresh_s)))
    try:
        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(f"the metrics endpoint cannot listen on {cfg.listen}: the address is already in use",
                               "metrics.listen") from exc
        raise MetricsError(f"the metrics endpoint cannot listen on {cfg.listen}: {exc}") from exc
    if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
        except (OSError, ssl.SSLError) as exc:
            server.server_close()
            raise MetricsError(f"metrics.tls_cert_file / tls_key_file cannot be loaded: {exc}") from exc
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""
