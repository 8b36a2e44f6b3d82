"""Qdrant vector index: a server (QDRANT_URL) or qdrant-client's embedded local mode (QDRANT_PATH).

The collection is created on first write with the vectors' dimension and cosine distance.

Local mode keeps the index in files under one directory and holds a lock on it: one process
at a time. That fits the embedded default (one worker process, the demo, the CLI while no
worker runs); a deployment with several worker processes or containers needs a Qdrant server
(compose runs one). A second process opening the same path fails with a message that says so.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from domain.errors import IndexUnavailable, PermanentError
from domain.models import SearchHit

log = logging.getLogger(__name__)


class DimensionMismatch(PermanentError):
    """The collection holds vectors of another dimension (another model): embeddings cannot go in."""


class QdrantIndex:
    """Parameters: ``collection``; ``url`` (+ ``api_key``, ``timeout``) for a server, else ``path``
    for local mode. The client is opened on first use."""

    def __init__(self, collection: str, *, url: str | None = None, api_key: str | None = None,
                 path: Path | str | None = None, timeout: float = 10.0) -> None:
        if (url is None) == (path is None):
            raise ValueError("give exactly one of url and path")
        self.collection = collection
        self.url = url
        self.api_key = api_key
        self.path = Path(path) if path is not None else None
        self.timeout = timeout
        self._client: Any = None
        self._dimension: int | None = None
        self._open_lock = threading.Lock()
        # Local mode is not meant for concurrent calls; a server is, and gets none of this lock.
        self._call_lock: threading.Lock | None = threading.Lock() if url is None else None

    @property
    def where(self) -> str:
        return self.url if self.url else f"local mode at {self.path}"

    def client(self) -> Any:
        if self._client is not None:
            return self._client
        with self._open_lock:
            if self._client is None:
                from qdrant_client import QdrantClient

                if self.url:
                    self._client = QdrantClient(url=self.url, api_key=self.api_key, timeout=int(self.timeout))
                else:
                    assert self.path is not None
                    self.path.mkdir(parents=True, exist_ok=True)
                    try:
                        self._client = QdrantClient(path=str(self.path))
                    except RuntimeError as exc:
                        if "already accessed" not in str(exc):
                            raise
                        raise IndexUnavailable(
                            f"the Qdrant index at QDRANT_PATH={self.path} is open in another process; local mode "
                            "allows one process (one worker process, or stop the worker before using the CLI): "
                            "set QDRANT_URL to a Qdrant server for more") from None
        return self._client

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            if self._call_lock is None:
                return fn(*args, **kwargs)
            with self._call_lock:
                return fn(*args, **kwargs)
        except ResponseHandlingException as exc:  # connection refused, timeouts
            raise IndexUnavailable(f"Qdrant at {self.where} unreachable: {exc}") from None
        except UnexpectedResponse as exc:
            if exc.status_code is not None and exc.status_code >= 500:
                raise IndexUnavailable(f"Qdrant at {self.where} answered {exc.status_code}") from None
            raise

    def _ensure_collection(self, dimension: int) -> None:
        if self._dimension == dimension:
            return
        from qdrant_client import models

        client = self.client()
        if not self._call(client.collection_exists, self.collection):
            try:
                self._call(client.create_collection, self.collection,
                           vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE))
                log.info("created Qdrant collection %s (%d dimensions, cosine) at %s", self.collection, dimension,
                         self.where)
            except Exception:
                # Another worker may have created it meanwhile; then it exists and is checked below.
                if not self._call(client.collection_exists, self.collection):
                    raise
        existing = self._existing_dimension()
        if existing is not None and existing != dimension:
            raise DimensionMismatch(
                f"Qdrant collection {self.collection!r} holds {existing}-dimensional vectors, the model gives "
                f"{dimension}: another CLIP_MODEL filled it; set QDRANT_COLLECTION to a new name and reindex")
        self._dimension = dimension

    def _existing_dimension(self) -> int | None:
        info = self._call(self.client().get_collection, self.collection)
        vectors = info.config.params.vectors
        return getattr(vectors, "size", None)

    def upsert(self, point_id: str, vector: Sequence[float], payload: dict[str, Any]) -> None:
        from qdrant_client import models

        self._ensure_collection(len(vector))
        self._call(self.client().upsert, self.collection,
                   points=[models.PointStruct(id=point_id, vector=list(vector), payload=payload)], wait=True)

    def search(self, vector: Sequence[float], limit: int, *, owner: str | None = None) -> list[SearchHit]:
        from qdrant_client import models

        client = self.client()
        if not self._call(client.collection_exists, self.collection):
            return []  # nothing embedded yet
        query_filter = None
        if owner is not None:
            query_filter = models.Filter(must=[models.FieldCondition(key="owner",
                                                                     match=models.MatchValue(value=owner))])
        result = self._call(client.query_points, self.collection, query=list(vector), limit=limit,
                            query_filter=query_filter, with_payload=True)
        return [SearchHit(str((p.payload or {}).get("image_id", p.id)), float(p.score), dict(p.payload or {}))
                for p in result.points]

    def get_vector(self, point_id: str) -> list[float] | None:
        client = self.client()
        if not self._call(client.collection_exists, self.collection):
            return None
        points = self._call(client.retrieve, self.collection, ids=[point_id], with_vectors=True)
        if not points:
            return None
        return list(points[0].vector)

    def count(self) -> int:
        client = self.client()
        if not self._call(client.collection_exists, self.collection):
            return 0
        return int(self._call(client.count, self.collection, exact=True).count)

    def ping(self) -> None:
        """Readiness. A server: list collections. Local mode, open in this process: the same;
        not open here: the directory must be usable, without taking its lock from the worker."""
        if self.url or self._client is not None:
            self._call(self.client().get_collections)
            return
        assert self.path is not None
        target = self.path.resolve()
        while not target.exists() and target != target.parent:
            target = target.parent  # created on first use: the nearest existing folder must allow it
        if not target.is_dir() or not os.access(target, os.W_OK):
            raise IndexUnavailable(f"QDRANT_PATH {self.path} is not a writable directory")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._dimension = None
