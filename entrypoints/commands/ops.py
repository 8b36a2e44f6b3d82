"""`atelier ops`: the health, readiness, metrics and dashboard server."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit


def management_url(broker_url: str, configured: str | None) -> str:
    """RABBITMQ_MANAGEMENT_URL, else the management UI's default port on the broker's host."""
    if configured:
        return configured
    host = urlsplit(broker_url).hostname or "localhost"
    return f"http://{host}:15672/"


def build_app(settings, container, broker):  # type: ignore[no-untyped-def]
    """The ops WSGI app for this process's settings, container and broker."""
    from prometheus_client import CollectorRegistry

    from adapters.metrics import AtelierCollector
    from entrypoints.ops import Auth, OpsApp, Readiness, rabbitmq_dashboard_page

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AtelierCollector(container.metrics_store, lambda: container.metrics))
    dashboard = page = None
    if settings.broker_kind == "redis":
        from dramatiq_dashboard import DashboardApp

        from entrypoints.ops import DASHBOARD_PREFIX

        dashboard = DashboardApp(broker=broker, prefix=DASHBOARD_PREFIX)
    elif settings.broker_kind == "rabbitmq":
        page = rabbitmq_dashboard_page(management_url(settings.broker_url, settings.rabbitmq_management_url))
    return OpsApp(
        auth=Auth(settings.ops_username, settings.ops_password, settings.ops_token),
        readiness=Readiness(container.readiness_checks, settings.ops_check_timeout_s),
        registry=registry, dashboard=dashboard, dashboard_page=page,
        jobs=container.jobs if settings.jobs_enabled else None,
        dead_letters=container.dead_letters,
    )


def cmd_ops(args: argparse.Namespace) -> int:
    import structlog

    # The actors package builds the broker and declares every actor, so the dashboard sees all queues.
    import actors
    from bootstrap import get_container
    from entrypoints.ops import serve

    settings = actors.settings
    log = structlog.get_logger("entrypoints.ops")
    if not (settings.ops_token or settings.ops_username) and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("ops endpoints are open: set OPS_USERNAME and OPS_PASSWORD, or OPS_TOKEN", host=args.host)
    serve(build_app(settings, get_container(), actors.broker), args.host, args.port)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ops", help="serve /healthz, /readyz, /metrics and the dashboard")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=9180, help="port (0 picks a free one)")
    p.set_defaults(func=cmd_ops)
