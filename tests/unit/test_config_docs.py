"""docs/configuration.md's table of environment variables is the one scripts/config_docs.py
generates from the Settings model: a setting added, removed or changed without regenerating
the table fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings

from tests.services import ROOT


def load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("config_docs", ROOT / "scripts" / "config_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config_docs = load_script()


def test_the_settings_table_in_the_docs_is_up_to_date() -> None:
    problem = config_docs.check()
    assert problem is None, problem


def test_every_setting_has_one_row() -> None:
    from bootstrap.settings import Settings

    table = config_docs.render_table(Settings)
    for name in Settings.model_fields:
        assert table.count(f"| `{name.upper()}` |") == 1, name


class Tiny(BaseSettings):
    size: int = Field(8, ge=1, le=64, description="how big | in pixels")
    mode: Literal["a", "b"] = "a"
    url: str | None = None


def doc_with(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "configuration.md"
    path.write_text(f"# prose\n\n{config_docs.BEGIN}\n{table}{config_docs.END}\n\nmore prose\n")
    return path


def test_a_row_shows_type_bounds_default_and_description_or_an_empty_cell() -> None:
    table = config_docs.render_table(Tiny)
    assert "| `SIZE` | int, ≥ 1, ≤ 64 | `8` | how big \\| in pixels |" in table
    assert "| `MODE` | one of `a`, `b` | `a` |  |" in table
    assert "| `URL` | str | unset |  |" in table


def test_check_names_the_stale_table_and_write_fixes_it(tmp_path: Path) -> None:
    path = doc_with(tmp_path, config_docs.render_table(Tiny).replace("| `MODE` | one of `a`, `b` | `a` |  |\n", ""))
    problem = config_docs.check(path, Tiny)
    assert problem is not None and "stale" in problem and "MODE" in problem
    assert config_docs.write(path, Tiny) is True
    assert config_docs.check(path, Tiny) is None
    text = path.read_text()
    assert text.startswith("# prose\n") and text.endswith("\nmore prose\n")  # the prose is left alone
    assert config_docs.write(path, Tiny) is False


def test_missing_markers_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "configuration.md"
    path.write_text("no table here\n")
    assert "markers" in (config_docs.check(path, Tiny) or "")
    with pytest.raises(ValueError):
        config_docs.write(path, Tiny)
