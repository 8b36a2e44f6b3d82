"""docs/messaging.md shows Meta's error codes exactly as adapters/channels/meta_errors.py holds them."""

from adapters.channels.meta_errors import markdown_table
from tests.services import ROOT

BEGIN, END = "<!-- BEGIN META CODES -->", "<!-- END META CODES -->"


def test_the_docs_table_is_the_reference():
    doc = (ROOT / "docs" / "messaging.md").read_text()
    shown = doc[doc.index(BEGIN) + len(BEGIN):doc.index(END)].strip()
    assert shown == markdown_table(), "regenerate it: python -c 'from adapters.channels.meta_errors import " \
                                      "markdown_table as t; print(t())'"
