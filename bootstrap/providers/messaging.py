"""Chat messaging: the channel gateways and the messaging service."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from bootstrap.providers import built
from domain.services.messaging import MessagingService

if TYPE_CHECKING:
    from adapters.metrics import MetricSpec
    from bootstrap.settings import Settings


class MessagingProviders:
    settings: Settings
    uow: Any
    engine: Any
    redis: Any

    @cached_property
    def channel_gateways(self):  # type: ignore[no-untyped-def]
        """One ChannelGateway per concrete channel (HTTP to WhatsApp Cloud API and Instagram)."""
        from adapters.channels.http import InstagramGateway, WhatsAppGateway
        from domain.models import MessageChannel

        s = self.settings
        return {
            MessageChannel.WHATSAPP: WhatsAppGateway(s.whatsapp_base_url, s.whatsapp_token, s.whatsapp_phone_number_id,
                                                     timeout=s.channel_timeout_s,
                                                     pair_interval_s=s.whatsapp_pair_interval_s),
            MessageChannel.INSTAGRAM: InstagramGateway(s.instagram_base_url, s.instagram_token,
                                                       timeout=s.channel_timeout_s,
                                                       pair_interval_s=s.instagram_pair_interval_s),
        }

    @cached_property
    def pacer(self):  # type: ignore[no-untyped-def]
        """Each channel's send rate per business number and pair rate, shared through Redis when
        there is one (keys atelier:<QUEUE_PREFIX>pace:), else within this process."""
        from adapters.state.pacing import InMemoryPacer, PaceRule, RedisPacer
        from domain.models import MessageChannel

        s = self.settings
        rules = {
            MessageChannel.WHATSAPP: PaceRule(s.whatsapp_phone_number_id or "default", s.whatsapp_send_rate_per_s,
                                              s.whatsapp_pair_interval_s),
            MessageChannel.INSTAGRAM: PaceRule("me", s.instagram_send_rate_per_s, s.instagram_pair_interval_s),
        }
        if self.redis is not None:
            return RedisPacer(self.redis, f"atelier:{s.queue_prefix}pace:", rules, margin_ms=s.pacing_margin_ms)
        return InMemoryPacer(rules, margin_ms=s.pacing_margin_ms)

    @cached_property
    def messaging(self) -> MessagingService:
        return MessagingService(self.uow, self.channel_gateways, lease_seconds=self.settings.message_send_lease_s,
                                pacer=self.pacer)

    def capability_metrics(self) -> list[MetricSpec]:
        from adapters.metrics import MetricSpec
        from adapters.sql.stats import pending_deliveries

        return [MetricSpec("atelier_message_deliveries_pending", "gauge", "Chat message deliveries not sent yet.",
                           lambda: pending_deliveries(self.engine), ("channel",))]

    def capability_close(self) -> None:
        for gateway in (built(self, "channel_gateways") or {}).values():
            gateway.close()
