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
    mock.control({"channel": "whatsapp", "window": args.window, "limits": {
        "throughput": args.whatsapp_throughput or None, "pair_interval_s": args.whatsapp_pair_interval or None}})
    mock.control({"channel": "instagram", "window": args.window, "limits": {
        "throughput": args.instagram_throughput or None}})
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
    p.add_argument("--whatsapp-throughput", type=int, default=80,
                   help="sends per second per number before 130429 (Meta's default 80; 0 = no limit)")
    p.add_argument("--whatsapp-pair-interval", type=float, default=6.0,
                   help="seconds between two messages to one recipient before 131056 (Meta's ~6; 0 = no limit)")
    p.add_argument("--instagram-throughput", type=int, default=300,
                   help="sends per second per account before 613 (Meta's 300; 0 = no limit)")
    p.add_argument("--window", choices=["open", "enforce"], default="open",
                   help="enforce the 24-hour customer-service window (free-form messages only to recipients "
                        "who wrote: POST /_mock/inbound), or treat every recipient as having written")
    p.set_defaults(func=cmd_mock_channels)
