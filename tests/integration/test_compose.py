"""compose.yaml: valid for docker-compose (Debian's, parsing only: no engine runs here), every command
of our image a real entry point of the project, every variable it sets one the settings know."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.services import ROOT

#: Entry points that other branches add (messaging, outbox + scheduler); the integrator empties this
#: list when they are merged, and the test then checks them like the others.
PENDING_ENTRY_POINTS: set[tuple[str, ...]] = set()
#: Settings fields that other branches add (media: the Qdrant server); emptied by the integrator.
PENDING_SETTINGS: set[str] = set()
#: Variables of the third-party images (documented by each image), not atelier settings.
IMAGE_VARIABLES = {
    "postgres": {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"},
    "rabbitmq": {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"},
    "minio/minio": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "minio/mc": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "jaegertracing/all-in-one": {"COLLECTOR_OTLP_ENABLED"},
}
#: OpenTelemetry's standard variables, read by the SDK and bootstrap/tracing.py, not atelier settings.
OTEL_VARIABLES = {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_TRACES_SAMPLER",
                  "OTEL_TRACES_SAMPLER_ARG", "OTEL_SERVICE_NAME"}
SERVICES = {"redis", "rabbitmq", "postgres", "minio", "minio-buckets", "qdrant", "migrate", "worker", "scheduler",
            "ops", "mock-channels", "message-webhooks", "jaeger"}


def compose_config(broker: str = "redis", path: str = "compose.yaml", **env: str) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    assert binary, "Debian's docker-compose is missing: scripts/tools.sh installs it"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("WORKER_", "OPS_", "ATELIER_", "OTEL_"))}
    return subprocess.run([binary, "-f", path, "config"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**clean, "ATELIER_BROKER": broker, **env})


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def config(request) -> dict:
    result = compose_config(request.param)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def ours(config: dict) -> dict[str, dict]:
    return {name: s for name, s in config["services"].items() if s.get("image") == "atelier:latest"}


def test_compose_is_valid_and_complete(config):
    assert set(config["services"]) == SERVICES
    assert config["services"]["redis"]["command"][1:3] == ["--appendonly", "yes"]
    assert config["services"]["rabbitmq"]["image"].endswith("-management")
    assert "postgres-data:/var/lib/postgresql/data:rw" in config["services"]["postgres"]["volumes"]
    assert set(ours(config)) == {"migrate", "worker", "scheduler", "ops", "mock-channels", "message-webhooks"}


def test_the_validator_refuses_a_broken_file(tmp_path):
    broken = (ROOT / "compose.yaml").read_text().replace("condition: service_completed_successfully",
                                                          "condition: service_finished", 1)
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    (tmp_path / "compose.yaml").write_text(broken)
    result = compose_config(path=str(tmp_path / "compose.yaml"))
    assert result.returncode != 0 and "service_finished" in result.stderr
    assert compose_config("kafka").returncode != 0  # no such broker


def test_the_broker_is_chosen_by_atelier_broker(config):
    urls = {s["environment"]["BROKER_URL"] for s in ours(config).values()}
    assert len(urls) == 1
    assert urls.pop().split("://")[0] in ("redis", "amqp")


def test_every_command_is_an_entry_point_of_the_project(config):
    from dramatiq.cli import make_argument_parser

    from entrypoints.cli import build_parser

    for name, service in ours(config).items():
        command = service["command"]
        if tuple(command[:3]) in PENDING_ENTRY_POINTS or tuple(command[:2]) in PENDING_ENTRY_POINTS:
            continue
        if command[0] == "atelier":
            args = build_parser().parse_args(command[1:])  # exits (fails the test) on unknown ones
            assert callable(args.func), name
        elif command[0] == "dramatiq":
            args = make_argument_parser().parse_args(command[1:])
            assert args.broker == "actors" and importlib.util.find_spec("actors"), name
        elif command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(command[2]), f"{name}: no module {command[2]}"
        else:
            raise AssertionError(f"{name}: {command} is not an entry point of the project")


def test_pending_entry_points_are_still_pending():
    """Once a pending entry point exists, it must leave the list and be checked for real."""
    from entrypoints.cli import build_parser

    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    for entry in PENDING_ENTRY_POINTS:
        if entry[0] == "atelier":
            assert entry[1] not in subcommands, f"{entry} exists now: remove it from PENDING_ENTRY_POINTS"
        else:
            assert not importlib.util.find_spec(entry[2]), f"{entry} exists now: remove it from PENDING_ENTRY_POINTS"
    from bootstrap.settings import Settings

    for variable in PENDING_SETTINGS:
        assert variable.lower() not in Settings.model_fields, f"{variable} exists now: remove it from PENDING_SETTINGS"


def test_every_variable_is_a_setting_or_the_images_own(config):
    from bootstrap.settings import Settings, load_settings
    from bootstrap.tracing import plan_from_env

    known = {field.upper() for field in Settings.model_fields} | PENDING_SETTINGS | OTEL_VARIABLES
    for name, service in config["services"].items():
        variables = set(service.get("environment") or {})
        if service.get("image") == "atelier:latest":
            assert variables <= known, f"{name}: not settings: {sorted(variables - known)}"
            # And the values pass the settings' own validation, the OTEL_* ones tracing's.
            values = {k.lower(): v for k, v in service["environment"].items()
                      if k not in PENDING_SETTINGS and k not in OTEL_VARIABLES}
            load_settings(**values)
            plan_from_env(service["environment"])
        else:
            image = service["image"].split(":")[0]
            assert variables <= IMAGE_VARIABLES.get(image, set()), f"{name}: {sorted(variables)}"


def test_tracing_is_off_by_default_and_jaeger_waits_behind_a_profile(config):
    from bootstrap.tracing import plan_from_env

    jaeger = config["services"]["jaeger"]
    assert jaeger["profiles"] == ["tracing"] and jaeger["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name, service in ours(config).items():
        assert not plan_from_env(service["environment"]).enabled, name
    names = {name: s["environment"]["OTEL_SERVICE_NAME"] for name, s in ours(config).items()}
    assert (names["worker"], names["scheduler"], names["ops"]) == ("atelier-worker", "atelier-scheduler", "atelier-ops")

    on = yaml.safe_load(compose_config(OTEL_EXPORTER_OTLP_ENDPOINT="http://jaeger:4318").stdout)
    for name, service in ours(on).items():
        assert plan_from_env(service["environment"]).exporters == ("otlp",), name
        assert service["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"


def test_dependencies_wait_for_health_or_completion(config):
    services = config["services"]
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}, which has no healthcheck"
            elif condition["condition"] == "service_completed_successfully":
                assert services[target]["restart"] == "no", f"{target} is not one-shot"
    for name in ("worker", "scheduler", "ops"):
        assert {"migrate", "redis", "minio-buckets"} <= set(services[name]["depends_on"]), name


def test_workers_scale_and_get_time_to_stop(config):
    worker = config["services"]["worker"]
    assert worker["deploy"]["replicas"] == 2
    timeout_ms = int(worker["command"][worker["command"].index("--worker-shutdown-timeout") + 1])
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace and int(grace.group(1)) * 1000 > timeout_ms

    scaled = compose_config(WORKER_REPLICAS="5", WORKER_SHUTDOWN_TIMEOUT_MS="60000", WORKER_STOP_GRACE_PERIOD="70s")
    worker = yaml.safe_load(scaled.stdout)["services"]["worker"]
    assert worker["deploy"]["replicas"] == 5
    assert "60000" in worker["command"] and worker["stop_grace_period"] == "70s"


def test_the_image_installs_the_project_with_its_migrations(tmp_path):
    """The Dockerfile runs `pip install` on the checkout: the wheel it builds carries every package."""
    import sys
    import zipfile

    # Build from a copy, as `COPY . /src` does, so the checkout gets no build/ or egg-info.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info",
                                                              "__pycache__", ".*_cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("atelier-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for path in ("actors/__init__.py", "entrypoints/ops.py", "entrypoints/commands/ops.py", "middleware/metrics.py",
                 "adapters/sql/migrations/env.py", "adapters/sql/migrations/versions/0001_images.py"):
        assert path in names, path
    assert not [n for n in names if n.startswith("tests/")]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "download.pytorch.org/whl/cpu" in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, re.M)
