"""prometheus-client exposition of the gateway's counters.

The HTTP endpoint runs in prometheus-client's own thread. It never touches the gateway's objects:
it reads the frozen snapshot the event loop last published on a :class:`~gateway.stats.SnapshotBoard`
(no per-reading metric calls on the hot path either)."""

from __future__ import annotations

import base64
import errno
import hmac
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from pydantic import SecretStr

from gateway.config import MetricsSection, split_host_port
from gateway.errors import AddressInUse, MetricsError
from gateway.stats import FrozenSnapshot, SnapshotBoard

Latest = Callable[[], tuple[float, FrozenSnapshot] | None]


class SnapshotCollector(Collector):
    """Turns the latest published snapshot (see gateway.stats) into Prometheus metric families.
    Nothing is served before the gateway published its first snapshot."""

    def __init__(self, latest: Latest) -> None:
        self._latest = latest

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        latest = self._latest()
        if latest is None:
            return
        built, s = latest
        yield GaugeMetricFamily("edge_snapshot_age_seconds", "age of the snapshot these figures come from",
                                value=max(0.0, time.time() - built))
        acc = s["accounting"]
        for name in ("readings_in", "delivered", "messages_in", "batches_written", "batches_delivered",
                     "bytes_up_telemetry", "bytes_up_control", "alerts", "events", "responses",
                     "control_written", "control_delivered"):
            yield CounterMetricFamily(f"edge_{name}", f"gateway counter {name}", value=acc[name])
        yield CounterMetricFamily("edge_readings_restored", "readings an earlier run left on disk",
                                  value=acc["restored"])
        for name in ("filtered", "dropped", "control_dropped"):
            fam = CounterMetricFamily(f"edge_readings_{name}" if name != "control_dropped" else "edge_control_dropped",
                                      f"{name} by reason", labels=["reason"])
            for reason, n in sorted(acc[name].items()):
                fam.add_metric([reason], n)
            yield fam
        rej = CounterMetricFamily("edge_rejected_messages", "rejected input by reason", labels=["reason"])
        for reason, n in sorted(s["rejects"].items()):
            rej.add_metric([reason], n)
        yield rej
        for name in ("buffered", "pending"):
            yield GaugeMetricFamily(f"edge_readings_{name}", f"readings {name}", value=acc[name])
        depth = GaugeMetricFamily("edge_buffer_records", "records waiting on disk", labels=["lane"])
        size = GaugeMetricFamily("edge_buffer_bytes", "bytes used on disk", labels=["lane"])
        for lane, info in s["buffer"].items():
            depth.add_metric([lane], info["records"])
            size.add_metric([lane], info["bytes"])
        yield depth
        yield size
        yield CounterMetricFamily("edge_disk_full_events", "buffer writes the disk refused (full)",
                                  value=s["disk"]["full_events"])
        yield GaugeMetricFamily("edge_control_held_in_memory", "control records waiting for the disk to take them",
                                value=s["disk"]["control_held_in_memory"])
        yield CounterMetricFamily("edge_buffer_unclean_starts", "starts that found the buffer not closed "
                                  "(kill -9, crash, power loss), over the life of the buffer",
                                  value=s["disk"]["unclean_starts"])
        yield from _command_metrics(s["commands"])
        yield GaugeMetricFamily("edge_uplink_connected", "1 when the uplink is connected",
                                value=1 if s["uplink"]["connected"] else 0)
        yield CounterMetricFamily("edge_uplink_connects", "uplink connections made", value=s["uplink"]["connects"])
        up = s["uplink"]
        yield CounterMetricFamily("edge_uplink_watchdog_trips", "links torn down as dead by the progress watchdog",
                                  value=up["watchdog_trips"])
        endpoint = GaugeMetricFamily("edge_uplink_endpoint", "1 for the cloud endpoint in use", labels=["url"])
        if up["endpoint"]:
            endpoint.add_metric([up["endpoint"]], 1)
        yield endpoint
        drain = up["drain"]
        yield GaugeMetricFamily("edge_backlog_drain_rate", "backlog readings acknowledged per second (last 10 s)",
                                value=drain["rate_readings_s"])
        yield GaugeMetricFamily("edge_backlog_drain_eta_seconds", "estimated seconds to empty the telemetry buffer "
                                "(NaN while it does not drain)",
                                value=drain["eta_s"] if drain["eta_s"] is not None else float("nan"))
        yield CounterMetricFamily("edge_internal_errors", "unexpected errors in processing (a bug: see the log)",
                                  value=s["internal_errors"])
        yield GaugeMetricFamily("edge_config_version", "pushed config version in force (0 = file config only)",
                                value=s["config_version"])
        pushes = CounterMetricFamily("edge_config_pushes", "pushed config documents by outcome", labels=["status"])
        for status in ("applied", "rejected", "stale"):
            pushes.add_metric([status], s["config_push"][status])
        yield pushes
        yield CounterMetricFamily("edge_config_load_errors", "persisted pushed configs that could not be loaded",
                                  value=s["config_push"]["load_errors"])
        yield CounterMetricFamily("edge_config_cleared", "empty messages on the config topic (a retained "
                                  "document cleared), ignored", value=s["config_push"]["cleared"])
        yield from _security_metrics(s["security"])


def _command_metrics(c: FrozenSnapshot) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    for name in ("received", "forwarded", "duplicates", "responses_matched", "responses_unmatched", "responses_forged",
                 "forgotten", "cleared"):
        yield CounterMetricFamily(f"edge_commands_{name}", f"cloud commands: {name}", value=c[name])
    yield GaugeMetricFamily("edge_commands_held", "commands held for an offline device", value=c["held"])
    for name, label, help_text in (("answered", "status", "commands the gateway answered itself, by status"),
                                   ("rejected", "reason", "commands rejected, by reason"),
                                   ("ignored", "reason", "command messages not answered at all, by reason")):
        fam = CounterMetricFamily(f"edge_commands_{name}", help_text, labels=[label])
        for value, n in sorted(c[name].items()):
            fam.add_metric([value], n)
        yield fam


def _security_metrics(s: FrozenSnapshot) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    denied = CounterMetricFamily("edge_security_denials", "refused connects, publishes, subscribes and deliveries "
                                 "on the local broker, by reason", labels=["reason"])
    for reason, n in sorted(s["denied"].items()):
        denied.add_metric([reason], n)
    yield denied
    yield CounterMetricFamily("edge_security_authenticated_connects", "connections admitted with an identity",
                              value=s["authenticated_connects"])
    yield GaugeMetricFamily("edge_security_devices_with_password", "devices in the password file",
                            value=s["devices_with_password"])
    yield GaugeMetricFamily("edge_security_revoked_certificates", "serials in the revoked list",
                            value=s["revoked_certificates"])
    yield CounterMetricFamily("edge_security_credential_reloads", "credential files reloaded",
                              value=s["credential_reloads"])
    yield CounterMetricFamily("edge_security_credential_reload_errors", "credential file versions refused as "
                              "invalid (the previous ones stayed in force)", value=s["credential_reload_errors"])


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
            ready = dict(latest[1].get("ready", {})) if latest is not None else {}
            uplink = latest[1].get("uplink", {}) if latest is not None else {}
            body.update(ready)
            body["uplink"] = "connected" if uplink.get("connected") else "disconnected"
            ok = ok and bool(ready) and all(ready.values())
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
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(board.latest))
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
