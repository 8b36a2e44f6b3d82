"""A producer process for the messaging end-to-end test (settings from the environment).

    python -m tests.e2e.messaging_producer create FILE      # record every message in FILE
    python -m tests.e2e.messaging_producer resend FILE      # send route_message and deliver_message again

FILE is JSON: [{"id", "channel", "to", "text"}, ...]. ``create`` goes through MessagingService
(message + message.created event in one transaction; the outbox relay routes it); run twice with
the same file it records nothing new. ``resend`` is a producer sending duplicates to the broker: route_message, and
deliver_message for each of the message's channels.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    command, path = argv
    messages = json.loads(open(path).read())
    import actors
    from bootstrap import get_container

    if command == "create":
        service = get_container().messaging
        created = sum(service.create(channel=m["channel"], recipient=m["to"], text=m["text"],
                                     message_id=m["id"])[1] for m in messages)
        print(json.dumps({"created": created}))
    elif command == "resend":
        sent = 0
        for m in messages:
            actors.messaging.route_message.send(m["id"])
            for channel in ("whatsapp", "instagram") if m["channel"] == "all" else (m["channel"],):
                actors.messaging.deliver_message.send(m["id"], channel)
                sent += 1
        print(json.dumps({"route_message": len(messages), "deliver_message": sent}))
    else:
        raise SystemExit(f"unknown command {command}")
    get_container().close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
