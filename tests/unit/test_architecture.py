"""The hexagonal rule, checked: the domain imports no infrastructure; the code is ruff-clean."""

import ast
import subprocess
import sys

import pytest

from tests.services import ROOT

FORBIDDEN = {"dramatiq", "sqlalchemy", "redis", "minio", "qdrant_client", "torch", "open_clip", "PIL",
             "structlog", "pika", "httpx", "alembic", "apscheduler", "prometheus_client", "adapters",
             "actors", "middleware", "schedules"}


@pytest.mark.parametrize("path", sorted((ROOT / "domain").rglob("*.py")), ids=lambda p: p.name)
def test_domain_imports_no_infrastructure(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
