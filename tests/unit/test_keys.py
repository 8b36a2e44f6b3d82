import pytest

from domain.errors import InvalidKey
from domain.keys import validate_key


@pytest.mark.parametrize("key", ["a", "originals/0b9c", "thumbnails/x/128.webp", "a=b+c@d-e_f.g"])
def test_accepts_safe_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../b", "a//b", "a/./b", "a\\b",
                                 "a b", "a/", "x" * 1025, "ünï"])
def test_refuses_unsafe_keys(key):
    with pytest.raises(InvalidKey):
        validate_key(key)
