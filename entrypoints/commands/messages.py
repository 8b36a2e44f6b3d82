"""`atelier messages ...`: send chat messages, show their status, receive the channels' webhooks.

``send`` records the message and a ``message.created`` event in one transaction; the outbox relay
(`python -m schedules`, or `atelier outbox relay`) hands it to route_message. So a message the
command reported is never lost, even if the broker is down at that moment.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _row(message: Any) -> dict[str, Any]:
    return {
        "id": message.id, "channel": message.channel.value, "status": message.status.value,
        "recipient": message.recipient, "sender": message.sender, "conversation_id": message.conversation_id,
        "text": message.text, "media_url": message.media_url,
        "template": message.template.as_dict() if message.template else None, "attempts": message.attempts,
        "created_at": message.created_at.isoformat(), "updated_at": message.updated_at.isoformat(),
        "deliveries": [{
            "channel": d.channel.value, "status": d.status.value, "attempts": d.attempts,
            "provider_message_id": d.provider_message_id, "last_error": d.last_error,
            "sent_at": d.sent_at.isoformat() if d.sent_at else None,
            "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
            "read_at": d.read_at.isoformat() if d.read_at else None,
        } for d in message.deliveries],
    }


def _template(args: argparse.Namespace) -> dict[str, Any] | None:
    """--template NAME [--language CODE] with --param TEXT (body parameters, in order) or
    --components JSON (the Cloud API's components, for headers, buttons, currencies...)."""
    from domain.errors import InvalidPayload

    if args.template is None:
        if args.param or args.components:
            raise InvalidPayload("--param and --components go with --template")
        return None
    if args.param and args.components:
        raise InvalidPayload("give --param or --components, not both")
    components: Any = []
    if args.components:
        try:
            components = json.loads(args.components)
        except ValueError as exc:
            raise InvalidPayload(f"--components is not JSON: {exc}") from None
    elif args.param:
        components = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in args.param]}]
    return {"name": args.template, "language": args.language, "components": components}


def cmd_send(args: argparse.Namespace) -> int:
    from bootstrap import get_container

    message, created = get_container().messaging.create(
        channel=args.channel, recipient=args.to, text=args.text, media_url=args.media_url, sender=args.sender,
        conversation_id=args.conversation, message_id=args.id, template=_template(args))
    print(message.id if created else f"{message.id} (already recorded: not sent again)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from bootstrap import get_container
    from domain.models import parse_id

    message = get_container().messaging.get(parse_id(args.message_id, "message id"))
    print(json.dumps(_row(message), indent=2))
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    """Serve the channels' delivery-status webhooks until SIGTERM/SIGINT."""
    from bootstrap import get_container
    from bootstrap.logging import configure_logging
    from bootstrap.settings import get_settings
    from entrypoints.ops import serve
    from entrypoints.webhooks import WebhookApp

    settings = get_settings()
    configure_logging(settings)
    container = get_container()
    app = WebhookApp(container.messaging.record_report, verify_token=settings.channel_webhook_verify_token,
                     secret=settings.channel_webhook_secret)
    serve(app, args.host, args.port)
    container.close()
    return 0


def register(subparsers: Any) -> None:
    messages = subparsers.add_parser("messages", help="send chat messages and follow their status").add_subparsers(
        dest="messages_command", required=True)
    p = messages.add_parser("send", help="record a message; the outbox relay routes it (prints its id)")
    p.add_argument("--channel", required=True, choices=["whatsapp", "instagram", "all"])
    p.add_argument("--to", required=True, help="recipient: phone number (WhatsApp) or Instagram-scoped id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text")
    what.add_argument("--media-url", help="an image URL the channel fetches")
    what.add_argument("--template", help="a WhatsApp template's name (approved by Meta): how a business writes "
                                         "first, or after the 24-hour customer-service window")
    p.add_argument("--language", default="en_US", help="the template's language code (default en_US)")
    p.add_argument("--param", action="append", default=[], help="a body parameter of the template, in order "
                                                                "(repeat for each)")
    p.add_argument("--components", default=None, help="the template's components as the Cloud API's JSON "
                                                      "(instead of --param)")
    p.add_argument("--sender", default=None)
    p.add_argument("--conversation", default=None, help="conversation id")
    p.add_argument("--id", default=None, help="your message id (UUID): sending it again is a no-op")
    p.set_defaults(func=cmd_send)
    p = messages.add_parser("show", help="a message's status and its deliveries, as JSON")
    p.add_argument("message_id")
    p.set_defaults(func=cmd_show)
    p = messages.add_parser("webhooks", help="receive the channels' delivery-status webhooks")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8098)
    p.set_defaults(func=cmd_webhooks)
