"""`atelier mock-channels`: stand-in WhatsApp and Instagram APIs (see entrypoints/devtools/mock_channels.py)."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any


def cmd_mock_channels(args: argparse.Namespace) -> int:
    import structlog

    from bootstrap.logging import configure_logging
    from bootstrap.settings import get_settings
    from entrypoints.devtools.mock_channels import MockChannels, make_server

    configure_logging(get_settings())
    log = structlog.get_logger("entrypoints.devtools.mock_channels")
    mock = MockChannels(status_webhook=args.status_webhook, app_secret=args.app_secret)
    server = make_server(args.host, args.port, mock)

    def _stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever to return: never call it on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = server.server_address[:2]
    log.info("mock channels listening", url=f"http://{host}:{port}", whatsapp=f"http://{host}:{port}/whatsapp",
             instagram=f"http://{host}:{port}/instagram", status_webhook=args.status_webhook)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        mock.close()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("mock-channels", help="serve mock WhatsApp and Instagram APIs (development, tests)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8099, help="port (0 picks a free one)")
    p.add_argument("--status-webhook", default=None,
                   help="report deliveries to URL/whatsapp and URL/instagram (e.g. http://host:8098/webhooks)")
    p.add_argument("--app-secret", default=None, help="sign status reports (X-Hub-Signature-256)")
    p.set_defaults(func=cmd_mock_channels)
