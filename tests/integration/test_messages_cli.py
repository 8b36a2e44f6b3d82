"""`atelier messages send/show/webhooks` and `atelier mock-channels` as real processes (SQLite,
stub broker): a message is recorded by the CLI, sent over HTTP to the mock channels, which report
it delivered to the webhook process, signed; `messages show` then says DELIVERED."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx

from adapters.channels.http import InstagramGateway, WhatsAppGateway
from adapters.sql.engine import make_engine
from adapters.sql.uow import uow_factory
from domain.models import MessageChannel
from domain.services.messaging import MessagingService
from tests import services


def _serve(args: list[str], env: dict[str, str], log, url: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", *args], env=env, cwd=services.ROOT,
                            stdout=log, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, f"{args[0]} exited"
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    services.wait_for(up, timeout=60, message=f"{args[0]} up")
    return proc


def test_send_deliver_report_show(base_env, tmp_path):
    env = dict(base_env, CHANNEL_WEBHOOK_SECRET="app-secret-1")
    assert services.run_cli(["migrate"], env).returncode == 0
    mock_port, hook_port = services.free_port(), services.free_port()
    mock_url, hook_url = f"http://127.0.0.1:{mock_port}", f"http://127.0.0.1:{hook_port}"
    procs = []
    with open(tmp_path / "procs.log", "ab") as log:
        try:
            procs.append(_serve(["messages", "webhooks", "--port", str(hook_port)], env, log, hook_url))
            procs.append(_serve(["mock-channels", "--port", str(mock_port), "--status-webhook",
                                 f"{hook_url}/webhooks", "--app-secret", "app-secret-1"], env, log, mock_url))

            sent = services.run_cli(["messages", "send", "--channel", "all", "--to", "+15550100", "--text", "hi",
                                     "--conversation", "c-1"], env)
            assert sent.returncode == 0, sent.stderr
            message_id = sent.stdout.strip()
            refused = services.run_cli(["messages", "send", "--channel", "whatsapp", "--to", "x",
                                        "--media-url", "file:///etc/passwd"], env)
            assert refused.returncode == 1 and "media_url must be an http(s) URL" in refused.stderr

            # What the worker does (the actors are tested end to end on real brokers).
            engine = make_engine(env["DATABASE_URL"])
            service = MessagingService(uow_factory(engine), {
                MessageChannel.WHATSAPP: WhatsAppGateway(f"{mock_url}/whatsapp", "t", "555", timeout=5),
                MessageChannel.INSTAGRAM: InstagramGateway(f"{mock_url}/instagram", "t", timeout=5)})
            for channel in service.route(message_id):
                service.deliver(message_id, channel)

            def shown() -> dict:
                out = services.run_cli(["messages", "show", message_id], env)
                assert out.returncode == 0, out.stderr
                return json.loads(out.stdout)

            done = services.wait_for(lambda: (s := shown())["status"] == "DELIVERED" and s, timeout=60,
                                     message="DELIVERED through the webhook")
            engine.dispose()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    assert [(d["channel"], d["status"], d["attempts"]) for d in done["deliveries"]] == [
        ("whatsapp", "DELIVERED", 1), ("instagram", "DELIVERED", 1)]
    assert done["conversation_id"] == "c-1" and all(d["delivered_at"] for d in done["deliveries"])
    assert all(p.returncode == 0 for p in procs)  # both stop cleanly on SIGTERM
