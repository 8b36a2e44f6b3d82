"""The dependency rule, checked for every layer, and the code ruff-clean.

entry points (entrypoints/, schedules/) -> actors -> bootstrap (the composition root) -> everything
below it; adapters -> domain; middleware -> domain; brokers and runtime are shared infrastructure
below them; the domain imports only itself and the standard library; nothing imports entry points.
Imports inside functions count: a lazy import is still a dependency.
"""

import ast
import subprocess
import sys
import textwrap

import pytest

from tests.services import ROOT

PACKAGES = {"domain", "runtime", "brokers", "adapters", "middleware", "bootstrap", "actors", "entrypoints",
            "schedules"}
ENTRY_POINTS = {"entrypoints", "schedules"}

#: What each layer may import of atelier's own packages (besides itself).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "runtime": set(),
    "brokers": {"domain", "runtime"},
    "adapters": {"domain", "runtime", "brokers"},
    "middleware": {"domain", "runtime", "brokers"},
    "bootstrap": {"domain", "runtime", "brokers", "adapters", "middleware"},
    "actors": {"domain", "runtime", "bootstrap"},
    "entrypoints": PACKAGES - {"entrypoints"},
    "schedules": PACKAGES - {"schedules"},
}


def imports_of(path):
    """(line, module) of every absolute import in the file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def violations(layer: str, path) -> list[str]:
    allowed = ALLOWED[layer] | {layer}
    found = []
    for line, module in imports_of(path):
        top = module.split(".")[0]
        rel = path.relative_to(ROOT)
        if layer == "domain" and top not in sys.stdlib_module_names and top != "domain":
            found.append(f"{rel}:{line} imports {module} (the domain imports only itself and the standard library)")
        elif top in PACKAGES and top not in allowed:
            why = "nothing imports entry points" if top in ENTRY_POINTS else f"{layer} may import {sorted(allowed)}"
            found.append(f"{rel}:{line} imports {module} ({why})")
    return found


SOURCES = [(layer, path) for layer in sorted(PACKAGES) for path in sorted((ROOT / layer).rglob("*.py"))]


@pytest.mark.parametrize(("layer", "path"), SOURCES, ids=[str(p.relative_to(ROOT)) for _, p in SOURCES])
def test_dependency_rule(layer, path):
    assert violations(layer, path) == []


def test_the_rule_names_the_import(tmp_path, monkeypatch):
    """The check itself: a driven adapter importing an actor is reported with the import named."""
    bad = tmp_path / "adapters" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("def f():\n    import actors.media\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("adapters", bad) == [
        "adapters/bad.py:2 imports actors.media (adapters may import ['adapters', 'brokers', 'domain', 'runtime'])"]
    assert violations("middleware", bad) != []
    domain_file = tmp_path / "domain" / "x.py"
    domain_file.parent.mkdir()
    domain_file.write_text("import json\nfrom sqlalchemy import select\n")
    assert [v.split(" (")[0] for v in violations("domain", domain_file)] == ["domain/x.py:2 imports sqlalchemy"]


def test_every_package_is_covered():
    top = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests", "bench"}
    assert top == PACKAGES


def test_the_composition_root_has_no_import_side_effects():
    """Building the container and its services imports no actor and configures no logging (the
    broker they share is built from settings and connects to nothing); the routing table is data."""
    code = textwrap.dedent("""
        import logging, sys
        import dramatiq.broker
        import bootstrap
        from bootstrap.routing import ROUTES
        from bootstrap.settings import load_settings
        before = list(logging.getLogger().handlers)
        container = bootstrap.Container(load_settings(broker_url="stub://", database_url="sqlite://"))
        for name in ("media", "uploads", "messaging", "outbox_relay", "dead_letters", "fallback_drainer",
                     "metrics", "readiness_checks"):
            getattr(container, name)
        assert ROUTES and all(r.actor for r in ROUTES)
        assert not [m for m in sys.modules if m == "actors" or m.startswith("actors.")], "actors imported"
        assert logging.getLogger().handlers == before, "logging configured"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stdout + result.stderr


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
