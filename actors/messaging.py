"""Messaging actors: thin wrappers around MessagingService.

route_message(message_id) is what the outbox routes ``message.created`` to (bootstrap/routing.py);
it plans the deliveries and sends deliver_message(message_id, channel) once per channel.
deliver_message sends one delivery; the service never sends a delivery that is already SENT,
so the broker redelivering either message sends nothing twice. When the channel accepted a send
whose SENT record failed (the database down), the receipt rides on the message in the
``delivery_receipt`` option: the retry, and a replay of its dead letter, record it instead of
sending again. A delivery paced (over a channel's send rate or pair rate) waits in place up to
PACING_MAX_SLEEP_MS, else is parked for its wait.
"""

from time import sleep
from typing import Any

import dramatiq
import structlog
from dramatiq.middleware import CurrentMessage

from actors import settings
from actors.ticks import run_tick
from bootstrap import get_container, queue
from domain.errors import Paced, SendNotRecorded
from domain.models import SendReceipt, parse_id
from domain.services.messaging import parse_channel

#: Message option carrying the receipt of a send that was accepted but not recorded.
RECEIPT_OPTION = "delivery_receipt"
#: Retries of a message carrying a receipt: about 3 days at the longest backoff (5 min), so the
#: receipt outlives a long database outage instead of resting in a dead letter until replayed.
RECEIPT_MAX_RETRIES = 1000

# Middleware options: route_message runs once per message id within 24 h (Dedup); each channel's
# deliveries go through its circuit breaker, parked on the channel's fallback queue while it is open.
# A delivery already sent ends without calling the channel: no evidence for the circuit (requires contact).
ROUTE_OPTIONS = {"dedup_key": lambda message_id: f"message:{message_id}", "dedup_window": 86400}
DELIVER_OPTIONS = {"circuit": lambda message_id, channel: f"channel:{channel}", "circuit_fallback": True,
                   "circuit_requires_contact": True,
                   # Paced: the delivery waits for its slot within the channel's rates, parked by
                   # ClassifiedRetries without spending a retry; expected, so logged at INFO.
                   "throws": (Paced,)}


@dramatiq.actor(queue_name=queue(settings, "messages"), **ROUTE_OPTIONS)
def route_message(message_id: str) -> None:
    message_id = parse_id(message_id, "message_id")
    structlog.contextvars.bind_contextvars(outbound_message_id=message_id)
    for channel in get_container().messaging.route(message_id):
        deliver_message.send(message_id, channel.value)


# A channel call is bounded by CHANNEL_TIMEOUT_S; the time limit only catches a hung run.
@dramatiq.actor(queue_name=queue(settings, "messages"),
                time_limit=int(settings.message_send_lease_s * 1000), **DELIVER_OPTIONS)
def deliver_message(message_id: str, channel: str) -> None:
    message_id = parse_id(message_id, "message_id")
    channel_ = parse_channel(channel, concrete=True)
    structlog.contextvars.bind_contextvars(outbound_message_id=message_id, channel=channel_.value)
    message = CurrentMessage.get_current_message()
    options: dict[str, Any] = message.options if message is not None else {}
    messaging, slept = get_container().messaging, 0.0
    while True:
        try:
            messaging.deliver(message_id, channel_, sent=carried_receipt(options, message_id, channel_.value))
            return
        except SendNotRecorded as exc:
            carry_receipt(options, message_id, channel_.value, exc.receipt)
            raise
        except Paced as exc:
            # A short wait is slept here (a park comes back through the broker's delay queue, up
            # to the worker timeout late); a longer one parks the message (ClassifiedRetries).
            if slept + exc.wait_s > settings.pacing_max_sleep_ms / 1000:
                raise
            sleep(exc.wait_s)
            slept += exc.wait_s


def carry_receipt(options: dict[str, Any], message_id: str, channel: str, receipt: SendReceipt) -> None:
    """Put the receipt on the running message: Retries re-enqueues it with its options, and a dead
    letter keeps them. While it rides, the message retries for days: only the database is missing."""
    options[RECEIPT_OPTION] = {"message_id": message_id, "channel": channel,
                               "provider_message_id": receipt.provider_message_id}
    retries = options.get("max_retries")
    options["max_retries"] = max(retries if isinstance(retries, int) else 0, RECEIPT_MAX_RETRIES)
    # The retry records the receipt without calling the channel: an open circuit must not park
    # it in the fallback list (Redis), where a flush would lose the receipt.
    options["circuit_exempt"] = True


def carried_receipt(options: dict[str, Any], message_id: str, channel: str) -> SendReceipt | None:
    """The receipt an earlier run of this delivery left on the message, if it is for this delivery."""
    carried = options.get(RECEIPT_OPTION)
    if not isinstance(carried, dict) or carried.get("message_id") != message_id or carried.get("channel") != channel:
        return None
    provider_id = carried.get("provider_message_id")
    return SendReceipt(provider_id if isinstance(provider_id, str) else None)


# Sent by the scheduler every MESSAGE_SWEEP_INTERVAL_S (schedules/jobs.py): deliveries left PENDING
# with nothing sending them (their message lost with a circuit's fallback list, say) are routed
# again from the database of record; deliver_message sends each at most once whatever runs it.
# A tick like relay_outbox: no retries, a failed one logged (actors/ticks.py), stale ones dropped.
@dramatiq.actor(queue_name=queue(settings, "messages"), max_retries=0, dead_letter_expired=False,
                max_age=int(max(60_000, 10_000 * settings.message_sweep_interval_s)), time_limit=120_000)
def sweep_deliveries() -> None:
    run_tick("sweep_deliveries", lambda: get_container().messaging.sweep_stale(
        lambda message_id, channel: deliver_message.send(message_id, channel.value),
        pending_for=settings.message_sweep_after_s, unknown_for=settings.message_sweep_unknown_after_s,
        # Three times the attempts one deliver_message makes with its retries: the channel will not take it.
        max_attempts=3 * (settings.retry_max_retries + 1)))
