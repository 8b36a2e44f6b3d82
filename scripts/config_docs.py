"""The table of environment variables in docs/configuration.md, generated from the Settings model.

    python scripts/config_docs.py            # print the table
    python scripts/config_docs.py --write    # rewrite the table in docs/configuration.md
    python scripts/config_docs.py --check    # exit 1 if the table there is stale

One row per field of ``bootstrap.settings.Settings``: the variable (the field name upper-cased),
its type with the bounds the model enforces, its default and its ``Field(description=...)`` (an
empty cell when a field has none). Fields are grouped by the settings group class that declares
them (one per capability, in bootstrap/settings/), in the model's field order. The table
sits between the BEGIN and END markers; the prose around it is written by hand.
``tests/unit/test_config_docs.py`` runs ``check()``, so a settings change without ``--write``
fails the tests.
"""

from __future__ import annotations

import argparse
import difflib
import enum
import re
import sys
import types
from pathlib import Path, PurePath
from typing import Any, Literal, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN SETTINGS TABLE -->"
END = "<!-- END SETTINGS TABLE -->"
HEADER = "| variable | type | default | description |\n|---|---|---|---|"
TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool"}


def settings_model() -> type:
    """The Settings model (the checkout's root made importable when run as a script)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from bootstrap.settings import Settings

    return Settings


def cell(text: str) -> str:
    """Text fit for one table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def env_name(name: str, field: Any, model: type) -> str:
    alias = field.validation_alias or field.alias
    if isinstance(alias, str):
        return alias.upper()
    choices = getattr(alias, "choices", None)  # AliasChoices: the first plain name
    if choices and isinstance(choices[0], str):
        return choices[0].upper()
    prefix = model.model_config.get("env_prefix", "") or ""
    return f"{prefix}{name}".upper()


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: str, int, path, list of int, one of `a`, `b`."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        return " or ".join(type_name(a) for a in present)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (tuple, list, set, frozenset):
        items = [a for a in args if a is not Ellipsis]
        return f"list of {type_name(items[0])}" if items else "list"
    if isinstance(annotation, type):
        if issubclass(annotation, PurePath):
            return "path"
        if issubclass(annotation, enum.Enum):
            return "one of " + ", ".join(f"`{member.value}`" for member in annotation)
        if annotation in TYPE_NAMES:
            return TYPE_NAMES[annotation]
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def bounds(field: Any) -> list[str]:
    """The constraints pydantic enforces on the field (ge/gt/le/lt, lengths, pattern)."""
    found: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    out = []
    for name, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
        if name in found:
            out.append(f"{sign} {number(found[name])}")
    if "min_length" in found and "max_length" in found:
        out.append(f"{found['min_length']}-{found['max_length']} characters")
    elif found.get("min_length") == 1:
        out.append("not empty")
    elif "min_length" in found:
        out.append(f"at least {found['min_length']} characters")
    elif "max_length" in found:
        out.append(f"at most {found['max_length']} characters")
    if "pattern" in found:
        out.append(f"matching `{found['pattern']}`")
    return out


def default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, enum.Enum):
        text = str(value.value)
    elif isinstance(value, PurePath):
        text = value.as_posix()
    elif isinstance(value, tuple | list | set | frozenset):
        text = ",".join(number(v) for v in value)
    else:
        text = number(value)
    return f"`{text}`"


def group_title(cls: type) -> str:
    """CoreSettings -> Core, MediaSettings -> Media; the declaring module beside it."""
    name = cls.__name__.removesuffix("Settings") or cls.__name__
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    module = cls.__module__.replace(".", "/")
    return f"**{words}** (`{module}.py`)"


def groups(model: type) -> list[tuple[type, list[str]]]:
    """The model's fields by the class that declares them, in the model's field order (pydantic
    lists the fields of the base nearest its own bases first)."""
    declared: dict[type, list[str]] = {}
    for name in model.model_fields:
        owner = next((cls for cls in model.__mro__ if name in cls.__dict__.get("__annotations__", {})), model)
        declared.setdefault(owner, []).append(name)
    return list(declared.items())


def render_table(model: type | None = None) -> str:
    """The markdown table of every environment variable the model reads."""
    model = model or settings_model()
    grouped = groups(model)
    rows = [HEADER]
    for cls, names in grouped:
        if len(grouped) > 1:
            rows.append(f"| {group_title(cls)} | | | |")
        for name in names:
            field = model.model_fields[name]
            kind = ", ".join([type_name(field.annotation), *bounds(field)])
            rows.append(f"| `{env_name(name, field, model)}` | {cell(kind)} | {cell(default_text(field))} "
                        f"| {cell(field.description or '')} |")
    return "\n".join(rows) + "\n"


def replace_block(text: str, table: str) -> str:
    """``text`` with everything between the markers replaced by ``table``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN} and {END} are missing or out of order")
    return text[:start + len(BEGIN)] + "\n" + table + text[end:]


def check(path: Path = DOC, model: type | None = None) -> str | None:
    """None when the table in ``path`` matches the model, else a message saying what differs."""
    try:
        text = path.read_text(encoding="utf-8")
        wanted = replace_block(text, render_table(model))
    except (OSError, ValueError) as exc:
        return f"{path}: {exc}"
    if wanted == text:
        return None
    diff = difflib.unified_diff(text.splitlines(), wanted.splitlines(), "in the docs", "from Settings",
                                lineterm="", n=0)
    shown = list(diff)[:40]
    return (f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: the settings table is stale; "
            f"run `python scripts/config_docs.py --write`\n" + "\n".join(shown))


def write(path: Path = DOC, model: type | None = None) -> bool:
    """Rewrite the table in ``path``; True if it changed."""
    text = path.read_text(encoding="utf-8")
    wanted = replace_block(text, render_table(model))
    if wanted == text:
        return False
    path.write_text(wanted, encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the table in docs/configuration.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if the table in docs/configuration.md is stale")
    args = parser.parse_args(argv)
    if args.check:
        problem = check()
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print(f"{DOC.relative_to(ROOT)}: the settings table is up to date")
        return 0
    if args.write:
        changed = write()
        print(f"{DOC.relative_to(ROOT)}: {'table rewritten' if changed else 'already up to date'}")
        return 0
    sys.stdout.write(render_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
