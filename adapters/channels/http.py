"""ChannelGateway adapters over httpx, speaking the channels' real request shapes.

- WhatsApp Cloud API: ``POST {base}/{phone_number_id}/messages`` with
  ``{"messaging_product": "whatsapp", "to": ..., "type": "text", "text": {"body": ...}}``
  (or ``"type": "image", "image": {"link": ...}``, or ``"type": "template", "template": {"name": ...,
  "language": {"code": ...}, "components": [...]}``); the answer's ``messages[0].id`` is the wamid.
- Instagram Messaging API: ``POST {base}/me/messages`` with ``{"recipient": {"id": ...},
  "message": {"text": ...}}`` (or an image attachment); the answer's ``message_id``.

Both carry ``Authorization: Bearer <token>``, plus ``Idempotency-Key`` (one value per delivery,
every attempt) and ``X-Atelier-Message-Id``: Meta ignores them; the mock channels dedup and count
by them.

Failures are classified for retries and the circuit breaker by Meta's error code, not the HTTP
status (adapters/channels/meta_errors.py: the reference table, and the HTTP status for a code it
does not know); timeouts and connection errors are TransientError.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from typing import Any

import httpx

from adapters.channels.meta_errors import classify
from domain.errors import PermanentError, TransientError
from domain.models import OutboundMessage, SendReceipt
from runtime import dependency_reached

log = logging.getLogger(__name__)

MESSAGE_ID_HEADER = "X-Atelier-Message-Id"


#: The longest channel message id a delivery stores (message_deliveries.provider_message_id).
MAX_PROVIDER_ID = 255

#: The longest Retry-After taken from a channel (a day); the retry middleware bounds it again.
RETRY_AFTER_MAX_S = 86_400.0


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds in [0, RETRY_AFTER_MAX_S]: delta-seconds or an HTTP date; None when
    absent, unreadable or not a finite number (``inf``, ``1e400``, ``nan``)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


class HttpChannelGateway:
    """What both channels share: the client, headers, error classification."""

    channel = "channel"

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 10.0,
                 client: httpx.Client | None = None, pair_interval_s: float = 0.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        #: The least wait after a pair-rate answer (the channel's pair interval).
        self.pair_interval_s = pair_interval_s
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout),
                                              limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))

    def url(self) -> str:
        raise NotImplementedError

    def body(self, message: OutboundMessage) -> dict[str, Any]:
        raise NotImplementedError

    def provider_id(self, answer: Any) -> str | None:
        raise NotImplementedError

    def send(self, message: OutboundMessage, idempotency_key: str) -> SendReceipt:
        if not self.token:
            raise PermanentError(f"the {self.channel} channel is not configured (its token is not set)")
        headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": idempotency_key,
                   MESSAGE_ID_HEADER: message.id}
        payload = self.body(message)
        # The channel is called: this run is evidence for its circuit, whatever the answer
        # (deliver_message requires it; a delivery already sent ends without it).
        dependency_reached()
        try:
            response = self._client.post(self.url(), json=payload, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientError(f"{self.channel}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{self.channel}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if not 200 <= status < 300:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise classify(self.channel, status, body, raw=response.text[:300], pair_interval_s=self.pair_interval_s,
                           retry_after=parse_retry_after(response.headers.get("Retry-After")))
        try:
            provider_id = self.provider_id(response.json())
        except (ValueError, LookupError, TypeError, AttributeError):
            # Accepted all the same: resending would deliver it twice.
            log.warning("%s accepted message %s with an unreadable answer: %s", self.channel, message.id,
                        response.text[:200])
            provider_id = None
        if provider_id is not None and not (isinstance(provider_id, str) and "\x00" not in provider_id
                                            and len(provider_id) <= MAX_PROVIDER_ID):
            # An id no delivery row can hold would make every record of this send fail (and the
            # sweep send it again): accepted all the same, without its id.
            log.warning("%s accepted message %s with an id that cannot be stored: %.100r", self.channel, message.id,
                        provider_id)
            provider_id = None
        return SendReceipt(provider_id)

    def close(self) -> None:
        self._client.close()


class WhatsAppGateway(HttpChannelGateway):
    channel = "whatsapp"

    def __init__(self, base_url: str, token: str | None, phone_number_id: str | None, **kw: Any) -> None:
        super().__init__(base_url, token, **kw)
        self.phone_number_id = phone_number_id

    def send(self, message: OutboundMessage, idempotency_key: str) -> SendReceipt:
        if not self.phone_number_id:
            raise PermanentError("the whatsapp channel is not configured (WHATSAPP_PHONE_NUMBER_ID is not set)")
        return super().send(message, idempotency_key)

    def url(self) -> str:
        return f"{self.base_url}/{self.phone_number_id}/messages"

    def body(self, message: OutboundMessage) -> dict[str, Any]:
        body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                "to": message.recipient}
        if message.template is not None:
            template = message.template
            content: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
            if template.components:
                content["components"] = template.components
            body.update(type="template", template=content)
        elif message.text is not None:
            body.update(type="text", text={"body": message.text})
        else:
            body.update(type="image", image={"link": message.media_url})
        return body

    def provider_id(self, answer: Any) -> str | None:
        return answer["messages"][0]["id"]


class InstagramGateway(HttpChannelGateway):
    channel = "instagram"

    def url(self) -> str:
        return f"{self.base_url}/me/messages"

    def body(self, message: OutboundMessage) -> dict[str, Any]:
        if message.template is not None:  # the service refuses these; never sent as something else
            raise PermanentError("instagram has no message templates: send the template on whatsapp")
        if message.text is not None:
            content: dict[str, Any] = {"text": message.text}
        else:
            content = {"attachment": {"type": "image", "payload": {"url": message.media_url}}}
        return {"recipient": {"id": message.recipient}, "message": content}

    def provider_id(self, answer: Any) -> str | None:
        return answer["message_id"]
