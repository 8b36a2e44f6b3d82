"""A local directory as object store: the embedded default.

"Server side" here is the file system: compose concatenates the chunk files into a temporary
file with os.copy_file_range (the kernel copies; the bytes never enter Python) and renames it
into place, so the object appears whole or not at all, like an S3 multipart complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from domain.errors import NotFound, TransientError
from domain.keys import validate_key


class LocalObjectStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        # validate_key already forbids '..'; this also guards against symlinks inside root.
        if not path.is_relative_to(self.root):
            raise NotFound(f"object key {key!r} resolves outside the store")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._write_atomically(key, lambda fh: fh.write(data))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"object {key!r} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"object {key!r} does not exist") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        # Walk only the directory the prefix lies in, not the whole store.
        parent = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = (base / parent).resolve() if parent else base
        if not start.is_relative_to(base) or not start.is_dir():
            return
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(base).as_posix()
                if key.startswith(prefix):
                    yield key

    def url(self, key: str, expires_seconds: int = 3600) -> str:
        return self._path(key).as_uri()

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise TransientError(f"local store {self.root} is not writable")

    # --- uploads ---
    def _write_atomically(self, key: str, write) -> int:  # type: ignore[no-untyped-def]
        """Write to a temporary file then rename, so readers never see a half-written object;
        returns the size written."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                size = fh.tell()
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def compose(self, key: str, sources: Sequence[str], content_type: str = "application/octet-stream") -> None:
        paths = [self._path(source) for source in sources]

        def write(out) -> None:  # type: ignore[no-untyped-def]
            for path in paths:
                try:
                    src = open(path, "rb")
                except (FileNotFoundError, IsADirectoryError):
                    raise NotFound(f"object {path.relative_to(self.root).as_posix()!r} does not exist") from None
                with src:
                    _copy_file(src, out)

        self._write_atomically(key, write)

    def read_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            fh = open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"object {key!r} does not exist") from None
        with fh:
            while piece := fh.read(chunk_size):
                yield piece

    def put_stream(self, key: str, chunks: Iterable[bytes],
                   content_type: str = "application/octet-stream") -> int:
        def write(out) -> None:  # type: ignore[no-untyped-def]
            for piece in chunks:
                out.write(piece)

        return self._write_atomically(key, write)


def _copy_file(src, dst) -> None:  # type: ignore[no-untyped-def]
    """Append src to dst inside the kernel when it can (copy_file_range), else through a buffer."""
    dst.flush()
    size = os.fstat(src.fileno()).st_size
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - offset, offset_src=offset)
            if n == 0:
                break
            offset += n
    except OSError:  # file systems without copy_file_range (EXDEV, ENOSYS, EINVAL)
        pass
    # copy_file_range moved the descriptor's position: resync the buffered file object.
    dst.seek(0, os.SEEK_END)
    if offset < size:
        src.seek(offset)
        shutil.copyfileobj(src, dst, 1 << 20)
