"""Messaging settings: channel URLs, timeouts and the send lease are validated at start-up."""

import pytest

from bootstrap.settings import ConfigError, load_settings


def test_channel_settings_are_read_and_normalised(monkeypatch):
    monkeypatch.setenv("WHATSAPP_BASE_URL", "http://mock:8099/whatsapp/")
    monkeypatch.setenv("WHATSAPP_TOKEN", "")
    monkeypatch.setenv("INSTAGRAM_TOKEN", "ig-token")
    monkeypatch.setenv("CHANNEL_TIMEOUT_S", "2.5")
    s = load_settings()
    assert s.whatsapp_base_url == "http://mock:8099/whatsapp"
    assert s.whatsapp_token is None  # compose passes unset variables as empty strings
    assert (s.instagram_token, s.channel_timeout_s, s.message_send_lease_s) == ("ig-token", 2.5, 60.0)
    assert s.instagram_base_url.startswith("https://graph.instagram.com/")


@pytest.mark.parametrize("env, named", [
    ({"WHATSAPP_BASE_URL": "graph.facebook.com"}, "WHATSAPP_BASE_URL"),
    ({"INSTAGRAM_BASE_URL": "ftp://x"}, "INSTAGRAM_BASE_URL"),
    ({"CHANNEL_TIMEOUT_S": "0"}, "CHANNEL_TIMEOUT_S"),
    ({"WHATSAPP_PHONE_NUMBER_ID": "12/../34"}, "WHATSAPP_PHONE_NUMBER_ID"),
    ({"CHANNEL_TIMEOUT_S": "30", "MESSAGE_SEND_LEASE_S": "20"}, "MESSAGE_SEND_LEASE_S"),
])
def test_bad_values_stop_start_up_naming_the_variable(monkeypatch, env, named):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert named in exc.value.message


def test_tokens_are_never_echoed(monkeypatch):
    monkeypatch.setenv("CHANNEL_WEBHOOK_SECRET", "x")
    monkeypatch.setenv("WHATSAPP_TOKEN", "secret-token-value")
    monkeypatch.setenv("CHANNEL_TIMEOUT_S", "nope")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "secret-token-value" not in exc.value.message
