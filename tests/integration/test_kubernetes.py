"""deploy/k8s: the kustomize overlays render (`kubectl kustomize`), every object is valid for the
Kubernetes API (kubernetes-validate's strict schemas) and KEDA's objects for KEDA's CRDs
(cloudcoil-models-keda, generated from them); every variable the pods get is a setting, every command
an entry point of the project, every queue the actors declare has workers, and the KEDA triggers
name the real queue keys for the configured QUEUE_PREFIX. No cluster: rendering and schemas only,
plus the probes run against the real ops server and webhook receiver on 127.0.0.1."""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.services import ROOT, free_port, wait_for

# The lead's layout move renames these two modules (bootstrap.settings, entrypoints.cli).
SETTINGS_MODULE = "bootstrap.settings"
CLI_MODULE = "entrypoints.cli"

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("redis", "rabbitmq")
#: The oldest minor version still common in managed clusters, and the newest schemas shipped.
K8S_VERSIONS = ("1.29", "latest")
#: The image compose.yaml builds; every atelier container runs it.
IMAGE = "atelier:latest"
#: Worker Deployment -> the queues its group consumes (QUEUE_PREFIX + name).
WORKER_GROUPS = {
    "atelier-worker-media": {"media"},
    "atelier-worker-embeddings": {"embeddings"},
    "atelier-worker-messaging": {"messages"},
    "atelier-worker-core": {"uploads", "outbox", "fallback"},
}
DEPLOYMENTS = {*WORKER_GROUPS, "atelier-scheduler", "atelier-ops", "atelier-webhooks"}
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
#: KEDA 2.16's documented metadata of the two triggers (the CRD types it as a map of strings only):
#: type -> (required, allowed). Values are numbers in strings.
TRIGGER_METADATA = {
    "redis": ({"listName", "listLength"},
              {"address", "host", "port", "addressFromEnv", "hostFromEnv", "portFromEnv", "usernameFromEnv",
               "passwordFromEnv", "listName", "listLength", "activationListLength", "enableTLS", "unsafeSsl",
               "databaseIndex"}),
    "rabbitmq": ({"queueName", "mode", "value"},
                 {"host", "hostFromEnv", "usernameFromEnv", "passwordFromEnv", "protocol", "mode", "value",
                  "activationValue", "queueName", "vhostName", "useRegex", "pageSize", "operation", "timeout",
                  "excludeUnacknowledged", "unsafeSsl"}),
}
#: What a TriggerAuthentication may hand each trigger type (KEDA 2.16's docs).
TRIGGER_AUTH_PARAMETERS = {"address", "host", "port", "username", "password", "tls", "ca", "cert", "key",
                           "keyPassword"}
#: resource.Quantity's syntax (k8s.io/apimachinery): 250m, 1, 1.5, 512Mi, 2G, 1e3.
QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?(\d+(\.\d*)?|\.\d+))?")


# --- rendering --------------------------------------------------------------------------------------

def kustomize(directory: Path) -> list[dict[str, Any]]:
    binary = shutil.which("kubectl")
    assert binary, ("kubectl is missing: the test renders the overlays with `kubectl kustomize` (kubectl "
                    ">= 1.21 embeds kustomize v4+; the python-svc machine image ships kubectl 1.32)")
    result = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered(overlay: str) -> str:
    return json.dumps(kustomize(K8S / "overlays" / overlay))


def render(overlay: str) -> list[dict[str, Any]]:
    """The overlay's objects; a fresh copy each call, so a test may break them."""
    return json.loads(_rendered(overlay))


def kustomize_with(tmp_path: Path, **kustomization: Any) -> list[dict[str, Any]]:
    """Render a kustomization of our own in tmp_path (paths relative to it: kustomize refuses absolute)."""
    for key in ("resources", "components"):
        if key in kustomization:
            kustomization[key] = [os.path.relpath(K8S / p, tmp_path) for p in kustomization[key]]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **kustomization}))
    return kustomize(tmp_path)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


def named(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def generated(objects: list[dict], kind: str, name: str) -> dict:
    """A generated ConfigMap or Secret, whatever its hash suffix."""
    (found,) = [o for o in objects if o["kind"] == kind and re.fullmatch(rf"{name}(-[a-z0-9]+)?",
                                                                         o["metadata"]["name"])]
    return found


def data_of(obj: dict) -> dict[str, str]:
    if obj["kind"] == "Secret":
        return {**{k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()},
                **(obj.get("stringData") or {})}
    return dict(obj.get("data") or {})


def pod_specs(objects: list[dict]) -> Iterator[tuple[str, dict]]:
    for o in objects:
        if o["kind"] in ("Deployment", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def container_env(objects: list[dict], container: dict) -> dict[str, str]:
    """The environment the kubelet gives the container: envFrom first, then env (which wins)."""
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret",
                                                                                            source["secretRef"])
        assert (kind, ref["name"]) in by_name, f"{container['name']}: no {kind} {ref['name']}"
        env.update(data_of(by_name[kind, ref["name"]]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        else:
            ref = var["valueFrom"].get("configMapKeyRef") or var["valueFrom"]["secretKeyRef"]
            kind = "ConfigMap" if "configMapKeyRef" in var["valueFrom"] else "Secret"
            env[var["name"]] = data_of(by_name[kind, ref["name"]])[ref["key"]]
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in command, args and env values ($$ escapes; unknown stays)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def command_of(objects: list[dict], container: dict) -> list[str]:
    env = container_env(objects, container)
    return [expand(part, env) for part in container.get("command", []) + container.get("args", [])]


def worker_queues(objects: list[dict]) -> dict[str, list[str]]:
    """Worker Deployment -> the queues its `dramatiq --queues` names, expanded."""
    from dramatiq.cli import make_argument_parser

    queues = {}
    for name, deployment in named(objects, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = command_of(objects, container)
        if command[:1] == ["dramatiq"]:
            queues[name] = make_argument_parser().parse_args(command[1:]).queues or []
    return queues


def settings_env(objects: list[dict]) -> dict[str, str]:
    """The settings every atelier container gets (the workers', which all share them)."""
    (container,) = named(objects, "Deployment")["atelier-worker-core"]["spec"]["template"]["spec"]["containers"]
    return container_env(objects, container)


# --- what the code says -----------------------------------------------------------------------------

@functools.cache
def _broker_facts(env_json: str) -> str:
    """Import `actors` with a pod's settings in a subprocess (nothing connects) and report the broker's
    queues, delay queues, Redis namespace and every actor's queue and time limit."""
    script = """
import json
import actors
from dramatiq.common import dq_name
from dramatiq.middleware import TimeLimit

broker = actors.broker
default_limit = next(m.time_limit for m in broker.middleware if isinstance(m, TimeLimit))
queues = sorted(broker.get_declared_queues())
print(json.dumps({
    "broker": type(broker).__name__,
    "namespace": getattr(broker, "namespace", None),
    "queues": queues,
    "delay_queues": [dq_name(q) for q in queues],
    "actors": {name: {"queue": broker.get_actor(name).queue_name,
                      "time_limit": broker.get_actor(name).options.get("time_limit") or default_limit}
               for name in broker.get_declared_actors()},
}))
"""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), **json.loads(env_json)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def broker_facts(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(_broker_facts(json.dumps(env, sort_keys=True)))


def settings_module():
    return importlib.import_module(SETTINGS_MODULE)


# --- checks: each returns the problems it finds, so the tests can show they catch them ---------------

def schema_problems(obj: dict, version: str) -> list[str]:
    import kubernetes_validate

    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] in KEDA_KINDS:
        return keda_problems(obj)
    if version == "latest":
        version = kubernetes_validate.utils.latest_version()
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    # The schemas take any string for a quantity; the API server parses it.
    return [f"{where}: {c['name']}: {kind}.{resource}: {value!r} is not a quantity"
            for _, spec in pod_specs([obj]) for c in spec["containers"]
            for kind, values in c.get("resources", {}).items() for resource, value in values.items()
            if not QUANTITY.fullmatch(str(value))]


def keda_problems(obj: dict) -> list[str]:
    """KEDA's CRDs are not in the Kubernetes schemas: validate against the models generated from them
    (KEDA 2.16). Pydantic ignores unknown fields and coerces types, so the object must also come back
    unchanged: a misspelt field or a "1" for a 1 shows as a difference."""
    from cloudcoil.models.keda import v1alpha1
    from pydantic import ValidationError

    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj.get("apiVersion") != "keda.sh/v1alpha1":
        return [f"{where}: apiVersion {obj.get('apiVersion')!r} is not keda.sh/v1alpha1"]
    try:
        model = getattr(v1alpha1, obj["kind"]).model_validate(obj)
    except ValidationError as exc:
        return [f"{where}: {err['loc']}: {err['msg']}" for err in exc.errors()]
    back = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
    problems = [f"{where}: {path}: not in KEDA's schema, or of the wrong type" for path in differences(obj, back)]
    for trigger in obj["spec"].get("triggers", []):
        if trigger["type"] not in TRIGGER_METADATA:
            problems.append(f"{where}: trigger type {trigger['type']!r}: not one this test knows")
            continue
        required, allowed = TRIGGER_METADATA[trigger["type"]]
        keys = set(trigger["metadata"])
        problems += [f"{where}: {trigger['type']} trigger: missing {k}" for k in sorted(required - keys)]
        problems += [f"{where}: {trigger['type']} trigger: unknown {k}" for k in sorted(keys - allowed)]
        for key in ("listLength", "activationListLength", "databaseIndex", "value", "activationValue"):
            if key in keys and not re.fullmatch(r"\d+(\.\d+)?", trigger["metadata"][key]):
                problems.append(f"{where}: {key}: {trigger['metadata'][key]!r} is not a number")
    for ref in obj["spec"].get("secretTargetRef", []):
        if ref["parameter"] not in TRIGGER_AUTH_PARAMETERS:
            problems.append(f"{where}: parameter {ref['parameter']!r}: not one KEDA's triggers take")
    return problems


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in a.keys() | b.keys() for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b and type(a) is type(b) else [path or "."]


def setting_problems(objects: list[dict]) -> list[str]:
    """Every variable a container gets is a setting and the values pass the settings' validation;
    every key of the settings ConfigMap and Secret is a setting too (a typo would do nothing)."""
    module = settings_module()
    known = {field.upper() for field in module.Settings.model_fields}
    problems = []
    for kind, name in (("ConfigMap", "atelier-config"), ("Secret", "atelier-secrets")):
        unknown = set(data_of(generated(objects, kind, name))) - known
        if unknown:
            problems.append(f"{kind} {name}: not settings: {sorted(unknown)}")
    for owner, spec in pod_specs(objects):
        for container in spec["containers"]:
            env = container_env(objects, container)
            unknown = set(env) - known
            if unknown:
                problems.append(f"{owner}: not settings: {sorted(unknown)}")
                continue
            try:
                module.load_settings(**{k.lower(): v for k, v in env.items()})
            except module.ConfigError as exc:
                problems.append(f"{owner}: {exc.message}")
    return problems


def trigger_problems(objects: list[dict]) -> list[str]:
    """Each worker group's ScaledObject has one trigger per queue the group consumes and per delay
    queue, naming exactly the broker's keys for the configured QUEUE_PREFIX; nothing else."""
    env = settings_env(objects)
    facts = broker_facts(env)
    consumed = worker_queues(objects)
    problems = []
    scaled = named(objects, "ScaledObject")
    for deployment, queues in consumed.items():
        targets = [s for s in scaled.values() if s["spec"]["scaleTargetRef"]["name"] == deployment]
        if len(targets) != 1:
            problems.append(f"{deployment}: {len(targets)} ScaledObjects")
            continue
        expected = {q for queue in queues for q in (queue, f"{queue}.DQ")}
        named_keys: set[str] = set()
        for trigger in targets[0]["spec"]["triggers"]:
            meta = trigger["metadata"]
            if facts["broker"] == "AtelierRedisBroker" and trigger["type"] == "redis":
                namespace, _, queue = meta["listName"].partition(":")
                if namespace != facts["namespace"]:
                    problems.append(f"{deployment}: {meta['listName']}: not in namespace {facts['namespace']}")
                named_keys.add(queue)
            elif facts["broker"] == "AtelierRabbitmqBroker" and trigger["type"] == "rabbitmq":
                named_keys.add(meta["queueName"])
            else:
                problems.append(f"{deployment}: a {trigger['type']} trigger on a {facts['broker']}")
        if named_keys != expected:
            problems.append(f"{deployment}: triggers name {sorted(named_keys)}, the broker's keys are "
                            f"{sorted(expected)}")
        real = set(facts["queues"]) | set(facts["delay_queues"])
        if not named_keys <= real:
            problems.append(f"{deployment}: no such queues: {sorted(named_keys - real)}")
    return problems


def reference_problems(objects: list[dict]) -> list[str]:
    """Every name an object gives of another names an object that is there."""
    present = {(o["kind"], o["metadata"]["name"]) for o in objects}
    refs: list[tuple[str, str, str]] = []
    for o in objects:
        where, spec = f"{o['kind']}/{o['metadata']['name']}", o.get("spec", {})
        if o["kind"] in ("Deployment", "Job"):
            pod = spec["template"]["spec"]
            refs.append((where, "ServiceAccount", pod["serviceAccountName"]))
            for c in pod["containers"]:
                for source in c.get("envFrom", []):
                    kind = "ConfigMap" if "configMapRef" in source else "Secret"
                    refs.append((where, kind, (source.get("configMapRef") or source.get("secretRef"))["name"]))
        elif o["kind"] in ("ScaledObject", "HorizontalPodAutoscaler"):
            refs.append((where, "Deployment", spec["scaleTargetRef"]["name"]))
            for trigger in spec.get("triggers", []):
                refs.append((where, "TriggerAuthentication", trigger["authenticationRef"]["name"]))
        elif o["kind"] == "TriggerAuthentication":
            refs += [(where, "Secret", ref["name"]) for ref in spec["secretTargetRef"]]
    return [f"{where}: no {kind} {name}" for where, kind, name in refs if (kind, name) not in present]


# --- tests ------------------------------------------------------------------------------------------

def test_the_overlays_render_every_part(overlay):
    objects = render(overlay)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert set(named(objects, "Deployment")) == DEPLOYMENTS
    assert set(named(objects, "Job")) == {"atelier-migrate"}
    assert set(named(objects, "Service")) == {"atelier-ops", "atelier-webhooks"}
    assert set(named(objects, "ScaledObject")) == set(WORKER_GROUPS)
    assert ("Namespace", "atelier") in kinds and not named(objects, "HorizontalPodAutoscaler")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"atelier"}
    assert reference_problems(objects) == []


def test_what_is_applied_first_is_what_the_migration_needs(overlay):
    """docs/kubernetes.md step 5: `kubectl apply -k … -l atelier/apply-first=true`, wait for the Job."""
    objects = render(overlay)
    first = [o for o in objects if o["metadata"].get("labels", {}).get("atelier/apply-first") == "true"]
    assert sorted(o["kind"] for o in first) == ["ConfigMap", "Job", "Namespace", "Secret", "ServiceAccount"]
    assert reference_problems(first) == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid(overlay, version):
    problems = [p for obj in render(overlay) for p in schema_problems(obj, version)]
    assert problems == []


def test_the_validators_refuse_broken_objects():
    objects = render("redis")
    deployment = named(objects, "Deployment")["atelier-worker-media"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 35  # the field has "Seconds"
    assert schema_problems(deployment, "latest")
    deployment = named(render("redis"), "Deployment")["atelier-worker-media"]
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1.5 GB"
    assert schema_problems(deployment, "1.29")
    deployment = named(render("redis"), "Deployment")["atelier-scheduler"]
    deployment["spec"]["replicas"] = "2"
    assert schema_problems(deployment, "1.29")

    scaled = named(objects, "ScaledObject")["atelier-worker-media"]
    assert keda_problems(scaled) == []
    for breakage in ({"minReplicas": 1},  # the HPA's name, not KEDA's
                     {"maxReplicaCount": "10"},  # a string
                     {"scaleTargetRef": {}}):  # no name
        broken = copy.deepcopy(scaled)
        broken["spec"].update(breakage)
        assert keda_problems(broken), breakage
    for key, value in (("listLenght", "20"), ("listLength", "twenty")):  # a misspelt key, a word
        broken = copy.deepcopy(scaled)
        broken["spec"]["triggers"][0]["metadata"].pop("listLength")
        broken["spec"]["triggers"][0]["metadata"][key] = value
        assert keda_problems(broken), key
    auth = next(iter(named(objects, "TriggerAuthentication").values()))
    broken = copy.deepcopy(auth)
    broken["spec"]["secretTargetRef"][0]["secret"] = broken["spec"]["secretTargetRef"][0].pop("name")
    assert keda_problems(auth) == [] and keda_problems(broken)


def test_every_variable_is_a_setting(overlay):
    objects = render(overlay)
    assert setting_problems(objects) == []
    env = settings_env(objects)
    assert env["BROKER_URL"].split("://")[0] == {"redis": "redis", "rabbitmq": "amqp"}[overlay]
    assert env.get("REDIS_URL") or overlay == "redis"  # the Redis broker's Redis is the default
    # The KEDA-only Secret stays out of atelier's pods.
    for owner, spec in pod_specs(objects):
        for container in spec["containers"]:
            names = [(s.get("secretRef") or s.get("configMapRef"))["name"] for s in container.get("envFrom", [])]
            assert not [n for n in names if "keda" in n], owner


def test_an_unknown_or_bad_variable_is_found():
    objects = render("redis")
    config = generated(objects, "ConfigMap", "atelier-config")
    config["data"]["QUEUE_PREFX"] = "typo"
    assert any("QUEUE_PREFX" in p for p in setting_problems(objects))
    objects = render("redis")
    generated(objects, "ConfigMap", "atelier-config")["data"]["LOG_LEVEL"] = "LOUD"
    assert any("LOG_LEVEL" in p for p in setting_problems(objects))


def test_every_command_is_an_entry_point(overlay):
    from dramatiq.cli import make_argument_parser

    build_parser = importlib.import_module(CLI_MODULE).build_parser
    objects = render(overlay)
    for owner, spec in pod_specs(objects):
        (container,) = spec["containers"]
        assert container["image"] == IMAGE, owner
        command = command_of(objects, container)
        if command[0] == "atelier":
            assert callable(build_parser().parse_args(command[1:]).func), owner
        elif command[0] == "dramatiq":
            args = make_argument_parser().parse_args(command[1:])
            assert args.broker == "actors" and importlib.util.find_spec("actors"), owner
        elif command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(command[2]), f"{owner}: no module {command[2]}"
        else:
            raise AssertionError(f"{owner}: {command} is not an entry point of the project")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["x-app"]["image"] == IMAGE


def test_every_queue_has_one_worker_group(overlay):
    objects = render(overlay)
    env = settings_env(objects)
    facts = broker_facts(env)
    prefix = env["QUEUE_PREFIX"]
    consumed = worker_queues(objects)
    assert {name: {q.removeprefix(prefix) for q in queues} for name, queues in consumed.items()} == WORKER_GROUPS
    every = [q for queues in consumed.values() for q in queues]
    assert sorted(every) == facts["queues"], "each declared queue consumed by exactly one group"


def test_keda_triggers_name_the_real_queue_keys(overlay):
    objects = render(overlay)
    assert trigger_problems(objects) == []
    facts = broker_facts(settings_env(objects))
    keys = {t["metadata"].get("listName") or t["metadata"]["queueName"]
            for s in named(objects, "ScaledObject").values() for t in s["spec"]["triggers"]}
    if overlay == "redis":
        assert keys == {f"dramatiq:{q}" for q in facts["queues"] + facts["delay_queues"]}
    else:
        assert keys == set(facts["queues"] + facts["delay_queues"])


def test_a_prefix_the_triggers_do_not_follow_is_found(overlay):
    """QUEUE_PREFIX renames every queue (the workers follow through $(QUEUE_PREFIX)); triggers that
    still name the old keys are reported, and triggers renamed with it pass."""
    objects = render(overlay)
    generated(objects, "ConfigMap", "atelier-config")["data"]["QUEUE_PREFIX"] = "acme."
    problems = trigger_problems(objects)
    assert {p.split(":")[0] for p in problems} == set(WORKER_GROUPS), problems
    assert any("acme.media" in p for p in problems)
    for scaled in named(objects, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            meta = trigger["metadata"]
            if "listName" in meta:
                meta["listName"] = meta["listName"].replace("dramatiq:", "dramatiq:acme.")
            else:
                meta["queueName"] = "acme." + meta["queueName"]
    assert trigger_problems(objects) == []


def test_workers_scale_on_their_own_and_get_time_to_stop(overlay):
    objects = render(overlay)
    deployments = named(objects, "Deployment")
    pdbs = list(named(objects, "PodDisruptionBudget").values())
    for name in WORKER_GROUPS:
        deployment = deployments[name]
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns replicas"
        pod = deployment["spec"]["template"]
        command = command_of(objects, pod["spec"]["containers"][0])
        timeout_ms = int(command[command.index("--worker-shutdown-timeout") + 1])
        # As compose: the kill comes well after the shutdown timeout (messages go back to the broker).
        assert pod["spec"]["terminationGracePeriodSeconds"] * 1000 >= timeout_ms + 5000, name
        labels = pod["metadata"]["labels"]
        covering = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
        scaled = next(s for s in named(objects, "ScaledObject").values() if s["spec"]["scaleTargetRef"]["name"] == name)
        assert 1 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"], name
    for name in ("atelier-scheduler", "atelier-webhooks"):
        assert deployments[name]["spec"]["replicas"] == 2, name
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert any(p["spec"]["selector"]["matchLabels"].items() <= labels.items() and p["spec"].get("minAvailable") == 1
                   for p in pdbs), name
    # The scheduler waits for its relay loop up to OUTBOX_RELAY_BUDGET_MS + 10 s (schedules/__main__.py)
    # before it exits: the kill comes after that.
    budget_ms = settings_module().load_settings(
        **{k.lower(): v for k, v in settings_env(objects).items()}).outbox_relay_budget_ms
    grace_s = deployments["atelier-scheduler"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s * 1000 > budget_ms + 10_000
    for owner, spec in pod_specs(objects):
        for container in spec["containers"]:
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{owner}: {bound}"


def test_keda_reaches_the_brokers_the_workers_use(overlay):
    objects = render(overlay)
    broker = urllib.parse.urlsplit(settings_env(objects)["BROKER_URL"])
    (auth,) = named(objects, "TriggerAuthentication").values()
    secrets = {ref["parameter"]: data_of(named(objects, "Secret")[ref["name"]])[ref["key"]]
               for ref in auth["spec"]["secretTargetRef"]}
    if overlay == "redis":
        assert secrets["address"] == f"{broker.hostname}:{broker.port or 6379}"
        assert secrets["password"] == (broker.password or "")
        database = str(int(broker.path.strip("/") or 0))
        for scaled in named(objects, "ScaledObject").values():
            assert {t["metadata"]["databaseIndex"] for t in scaled["spec"]["triggers"]} == {database}
    else:
        assert secrets["host"] == settings_env(objects)["BROKER_URL"]
        for scaled in named(objects, "ScaledObject").values():
            for trigger in scaled["spec"]["triggers"]:
                assert trigger["metadata"]["mode"] == "QueueLength"
                assert trigger["metadata"]["protocol"] == "amqp"


def test_nothing_runs_as_root(overlay):
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"^RUN useradd .*--uid (\d+) (\w+)$", dockerfile, re.M).group(1))
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)[-1]
    assert uid != 0 and user not in ("root", "0")
    objects = render(overlay)
    labels = named(objects, "Namespace")["atelier"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for owner, spec in pod_specs(objects):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid, owner
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", owner
        assert spec["automountServiceAccountToken"] is False, owner
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"], owner
            assert ctx.get("runAsUser", uid) == uid and ctx.get("runAsNonRoot", True) is True, owner
            assert ctx["readOnlyRootFilesystem"] is True, owner
            # The places the image writes to (temp files, the CLIP weights' cache) are volumes.
            assert {"/tmp", "/home/atelier/.cache"} <= {m["mountPath"] for m in container["volumeMounts"]}, owner


def test_names_follow_a_name_prefix(tmp_path):
    """kustomize renames generated and prefixed objects; KEDA's references follow (kustomizeconfig)."""
    objects = kustomize_with(tmp_path, namePrefix="blue-", resources=["overlays/redis"])
    assert reference_problems(objects) == []
    assert {s["spec"]["scaleTargetRef"]["name"] for s in named(objects, "ScaledObject").values()} == {
        f"blue-{name}" for name in WORKER_GROUPS}


def test_the_cpu_hpa_fallback_renders_and_validates(tmp_path):
    objects = kustomize_with(tmp_path, resources=["overlays/redis"])
    assert named(objects, "ScaledObject")  # the overlay as shipped uses KEDA
    objects = kustomize_with(tmp_path, resources=["base"], components=["components/cpu-hpa"])
    assert not [o for o in objects if o["kind"] in KEDA_KINDS]
    hpas = named(objects, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == set(WORKER_GROUPS)
    assert reference_problems(objects) == []
    for obj in hpas.values():
        assert schema_problems(obj, "1.29") == []
        assert obj["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_the_docs_ask_for_a_consumer_timeout_above_the_longest_actor():
    """RabbitMQ closes a channel whose delivery stays unacknowledged past consumer_timeout; a message
    running longer would run twice. The docs page names the value for the longest time limit."""
    facts = broker_facts(settings_env(render("rabbitmq")))
    longest = max(actor["time_limit"] for actor in facts["actors"].values())
    assert longest == facts["actors"]["merge_upload"]["time_limit"] == 1_200_000
    page = (ROOT / "docs" / "kubernetes.md").read_text()
    (timeout,) = {int(v) for v in re.findall(r"consumer_timeout = (\d+)", page)}
    retry_max = settings_module().Settings.model_fields["retry_max_backoff_ms"]
    assert timeout > longest and timeout > max(m.le for m in retry_max.metadata if hasattr(m, "le"))
    for overlay in OVERLAYS:
        assert f"deploy/k8s/overlays/{overlay}" in page


# --- the probes, against the real servers ------------------------------------------------------------

def _serve(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen:
    """Start a pod's server command on 127.0.0.1:port, the atelier CLI of this checkout."""
    args = [sys.executable, "-m", CLI_MODULE, *command[1:]]
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.parametrize("deployment", ["atelier-ops", "atelier-webhooks"])
def test_the_probes_pass_on_the_real_server(deployment, tmp_path):
    """Each probe as the kubelet runs it, against the server the Deployment starts (stub broker,
    SQLite, local stores: the readiness checks all answer); the exec readiness probe also fails
    without the credentials, as it must when OPS_TOKEN is set."""
    objects = render("redis")
    (container,) = named(objects, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"]
    pod_env = container_env(objects, container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = free_port()
    secrets = {k: v for k, v in pod_env.items() if k.startswith("OPS_")}
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **secrets,
           "BROKER_URL": "stub://", "DATABASE_URL": f"sqlite:///{tmp_path / 'atelier.db'}",
           "LOCAL_STORE_DIR": str(tmp_path / "objects"), "QDRANT_PATH": str(tmp_path / "qdrant")}
    server = _serve(command_of(objects, container), port, env)
    try:
        wait_for(lambda: _status(f"http://127.0.0.1:{port}/healthz") == 200 or server.poll() is not None,
                 timeout=60, message=f"{deployment} serving /healthz")
        assert server.poll() is None, server.stderr.read()
        probes = [container[k] for k in ("livenessProbe", "readinessProbe")]
        assert all(probes), deployment
        for probe in probes:
            if "httpGet" in probe:
                target = probe["httpGet"]["port"]
                assert ports[target] if isinstance(target, str) else target
                assert _status(f"http://127.0.0.1:{port}{probe['httpGet']['path']}") == 200, probe
            else:
                command = [sys.executable if part == "python" else part.replace(str(ports["http"]), str(port))
                           for part in probe["exec"]["command"]]
                ran = subprocess.run(command, env={**env, **secrets}, capture_output=True, text=True,
                                     timeout=probe["timeoutSeconds"])
                assert ran.returncode == 0, ran.stderr
                without = subprocess.run(command, env={"PATH": env["PATH"]}, capture_output=True, text=True,
                                         timeout=probe["timeoutSeconds"])
                assert without.returncode != 0 and "401" in without.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
