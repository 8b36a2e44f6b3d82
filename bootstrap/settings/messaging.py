"""Chat messaging: the channel APIs (Meta's by default; compose points them at the mock channels)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from bootstrap.settings.base import Group, empty_is_unset


class MessagingSettings(Group):
    whatsapp_base_url: str = Field("https://graph.facebook.com/v21.0", description="WhatsApp Cloud API base URL.")
    whatsapp_token: str | None = Field(None, description="WhatsApp Cloud API access token.")
    whatsapp_phone_number_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$",
                                                 description="The business phone number id messages are sent from.")
    instagram_base_url: str = Field("https://graph.instagram.com/v21.0",
                                    description="Instagram Messaging API base URL.")
    instagram_token: str | None = Field(None, description="Instagram Messaging API access token.")
    channel_timeout_s: float = Field(10.0, gt=0, le=300, description="Connect/read/write timeout of one channel call.")
    message_send_lease_s: float = Field(
        60.0, gt=0, description="How long a delivery stays claimed by the run sending it; a run that died mid-send "
                                "blocks its delivery this long. Must exceed CHANNEL_TIMEOUT_S.")
    message_sweep_after_s: float = Field(
        900, gt=0,
        description="A delivery still PENDING this long after its last change, with nothing sending it, is routed "
                    "again from the database (its message was lost, e.g. with a circuit's fallback list in Redis). "
                    "Keep it above RETRY_MAX_BACKOFF_MS and the longest Retry-After honoured.")
    message_sweep_unknown_after_s: float = Field(
        86_400, gt=0,
        description="A delivery whose last send has no recorded outcome (its lease expired: the channel may have "
                    "accepted it, its receipt riding on a retry) is routed again only after this.")
    message_sweep_interval_s: float = Field(60, gt=0, description="How often the scheduler sends sweep_deliveries.")
    whatsapp_send_rate_per_s: int = Field(
        80, ge=0, le=100_000, description="Messages per second one WhatsApp business number sends at most, across "
        "every worker (Meta's throughput: 80 by default, 1,000 after Meta's upgrade); 0 = not paced.")
    whatsapp_pair_interval_s: float = Field(
        6.0, ge=0, le=3600, description="Seconds between two messages to the same WhatsApp recipient (Meta's pair "
        "rate: about one per 6 s; error 131056 beyond); also the least wait after a 131056. 0 = not paced.")
    instagram_send_rate_per_s: int = Field(
        300, ge=0, le=100_000, description="Messages per second one Instagram account sends at most (Meta's Send "
        "API: 300/s for text and images); 0 = not paced.")
    instagram_pair_interval_s: float = Field(
        0.0, ge=0, le=3600, description="Seconds between two messages to the same Instagram recipient (Meta "
        "publishes no figure, only that too many to one thread may be rate limited); 0 = not paced.")
    pacing_margin_ms: int = Field(
        100, ge=0, le=10_000, description="Pacing counts each rate's window this much longer, so that sends "
        "decided a window apart never reach the channel closer (a commit, a thread switch in between).")
    pacing_max_sleep_ms: int = Field(
        500, ge=0, le=10_000, description="A paced delivery waits for its slot in the worker thread up to this "
        "long; a longer wait parks it on the broker (delayed re-enqueue, back up to the worker timeout late).")
    channel_webhook_verify_token: str | None = Field(
        None, description="Meta's webhook verification token (`atelier messages webhooks`).")
    channel_webhook_secret: str | None = Field(
        None, description="App secret that signs each webhook POST (X-Hub-Signature-256); unset = not checked.")

    @field_validator("whatsapp_token", "whatsapp_phone_number_id", "instagram_token",
                     "channel_webhook_verify_token", "channel_webhook_secret", mode="before")
    @classmethod
    def _messaging_empty_is_unset(cls, value: object) -> object:
        return empty_is_unset(value)

    @field_validator("whatsapp_base_url", "instagram_base_url")
    @classmethod
    def _check_channel_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _lease_outlasts_a_call(self) -> MessagingSettings:
        if self.message_send_lease_s <= self.channel_timeout_s:
            raise ValueError(f"MESSAGE_SEND_LEASE_S ({self.message_send_lease_s:g}) must be longer than "
                             f"CHANNEL_TIMEOUT_S ({self.channel_timeout_s:g})")
        return self
