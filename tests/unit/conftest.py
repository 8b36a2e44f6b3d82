from collections.abc import Iterator

import pytest

from tests.unit.stack import Stack, make_stack


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = make_stack()
    yield s
    s.worker.stop()
    s.broker.close()
