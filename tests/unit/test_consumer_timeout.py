"""RabbitMQ takes back a delivery left unacked past its consumer_timeout (30 min by default),
closing the channel and redelivering everything on it (issue 16, hole 4). Start-up checks that
every actor's time limit, with a margin, and every delay a worker holds a message for stay inside
RABBITMQ_CONSUMER_TIMEOUT_S, and names the actor and the variable when one does not."""

import subprocess
import sys

import pytest

from bootstrap.broker import CONSUMER_TIMEOUT_MARGIN_MS, check_consumer_timeout
from bootstrap.settings import ConfigError, load_settings
from tests import services


def test_every_actor_fits_the_default_consumer_timeout():
    import actors

    check_consumer_timeout(actors.broker, load_settings())  # raises if one does not
    limits = {name: actors.broker.get_actor(name).options.get("time_limit")
              for name in ("merge_upload", "collect_abandoned_uploads")}
    assert all(limit + CONSUMER_TIMEOUT_MARGIN_MS <= 1_800_000 for limit in limits.values()), limits


def test_an_actor_whose_time_limit_does_not_fit_is_named():
    import actors

    with pytest.raises(ConfigError) as refused:
        check_consumer_timeout(actors.broker, load_settings(rabbitmq_consumer_timeout_s=900))
    message = str(refused.value)
    assert message.startswith("configuration error: RABBITMQ_CONSUMER_TIMEOUT_S:")
    assert "merge_upload" in message and "time_limit" in message
    assert "process_image" not in message  # 5 min + the margin fit in 15 min


def test_a_retry_delay_that_does_not_fit_is_named():
    import actors

    with pytest.raises(ConfigError) as refused:
        check_consumer_timeout(actors.broker, load_settings(rabbitmq_consumer_timeout_s=600))
    message = str(refused.value)
    assert "embed_image" in message and "max_backoff" in message  # 10 min of backoff
    assert "parks" in message  # the circuit breaker's and dead letters' 15 min parks


def test_a_rabbitmq_worker_refuses_to_start_with_one_line():
    env = services.subprocess_env(BROKER_URL=services.RABBITMQ_URL, REDIS_URL=services.REDIS_URL,
                                  RABBITMQ_CONSUMER_TIMEOUT_S="900", QUEUE_PREFIX=services.unique("ct") + "_")
    result = subprocess.run([sys.executable, "-c", "import actors"], env=env, cwd=services.ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("configuration error: RABBITMQ_CONSUMER_TIMEOUT_S:") and "merge_upload" in lines[-1]
    assert "Traceback" not in result.stderr
