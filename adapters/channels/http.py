"""ChannelGateway adapters over httpx, speaking the channels' real request shapes.

- WhatsApp Cloud API: ``POST {base}/{phone_number_id}/messages`` with
  ``{"messaging_product": "whatsapp", "to": ..., "type": "text", "text": {"body": ...}}``
  (or ``"type": "image", "image": {"link": ...}``); the answer's ``messages[0].id`` is the wamid.
- Instagram Messaging API: ``POST {base}/me/messages`` with ``{"recipient": {"id": ...},
  "message": {"text": ...}}`` (or an image attachment); the answer's ``message_id``.

Both carry ``Authorization: Bearer <token>``, plus ``Idempotency-Key`` (one value per delivery,
every attempt) and ``X-Atelier-Message-Id``: Meta ignores them; the mock channels dedup and count
by them.

Failures are classified for retries and the circuit breaker:
5xx, timeouts and connection errors -> TransientError; 429 -> TransientError with retry_after
from Retry-After; any other 4xx (and 3xx) -> PermanentError, with the channel's error message.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from typing import Any

import httpx

from domain.errors import PermanentError, TransientError
from domain.models import OutboundMessage, SendReceipt
from runtime import dependency_reached

log = logging.getLogger(__name__)

MESSAGE_ID_HEADER = "X-Atelier-Message-Id"


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


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = f" (code {error['code']})" if "code" in error else ""
        return f"{error.get('message', '')}{code}"[:300]
    return str(body)[:300]


class HttpChannelGateway:
    """What both channels share: the client, headers, error classification."""

    channel = "channel"

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 10.0,
                 client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
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
        # The channel is called: this run is evidence for its circuit, whatever the answer
        # (deliver_message requires it; a delivery already sent ends without it).
        dependency_reached()
        try:
            response = self._client.post(self.url(), json=self.body(message), headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientError(f"{self.channel}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TransientError(f"{self.channel}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise TransientError(f"{self.channel}: 429 rate limited: {_error_text(response)}", retry_after=retry_after)
        if status >= 500:
            raise TransientError(f"{self.channel}: {status}: {_error_text(response)}")
        if not 200 <= status < 300:
            raise PermanentError(f"{self.channel}: {status}: {_error_text(response)}")
        try:
            provider_id = self.provider_id(response.json())
        except (ValueError, LookupError, TypeError, AttributeError):
            # Accepted all the same: resending would deliver it twice.
            log.warning("%s accepted message %s with an unreadable answer: %s", self.channel, message.id,
                        response.text[:200])
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
        if message.text is not None:
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
        if message.text is not None:
            content: dict[str, Any] = {"text": message.text}
        else:
            content = {"attachment": {"type": "image", "payload": {"url": message.media_url}}}
        return {"recipient": {"id": message.recipient}, "message": content}

    def provider_id(self, answer: Any) -> str | None:
        return answer["message_id"]
