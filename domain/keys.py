"""Object-store keys: one validation shared by every store adapter."""

import re

from domain.errors import InvalidKey

_SEGMENT = re.compile(r"^[A-Za-z0-9._=+@-]+$")
MAX_KEY_LENGTH = 1024


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise InvalidKey.

    Safe means: non-empty, at most 1024 characters, '/'-separated segments of
    [A-Za-z0-9._=+@-], none of them empty, '.' or '..'. That keeps a local
    directory store inside its root and S3 keys free of surprises.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"object key {key!r} has an empty, '.' or '..' segment")
        if not _SEGMENT.match(segment):
            raise InvalidKey(f"object key {key!r} has characters outside [A-Za-z0-9._=+@-/]")
    return key
