"""The routing table: which actors receive which outbox events.

Patterns are fnmatch wildcards over the event type (``image.*``, ``*``); an event goes once to
each actor whose pattern matches, in table order. A subscriber receives the event as one dict
argument (id, type, aggregate_type, aggregate_id, payload, correlation_id, created_at) unless
its route gives ``args``, a function from that dict to the actor's arguments. Every message
carries dedup_key "<event id>:<actor>", so a subscriber runs once per event.

Only name actors that this code base declares: a route to an unknown actor fails the event,
which is retried and then marked dead. Adding a subscriber is one line, e.g.
    Route("image.processed", "embed_image", args=lambda e: (e["aggregate_id"],)),

ANNOUNCED lists the event types recorded with no subscriber on purpose: they are published (and
announced on pub/sub) with no delivery. A type in neither table is one this version does not know
(recorded by a newer one during a rolling deploy): the relay leaves it due for a relay that knows
it, and marks it dead after OUTBOX_UNROUTED_GRACE_S. A new event type therefore gets a line in one
of the two tables in the same change that records it.
"""

from domain.services.outbox import Route

ROUTES: list[Route] = [
    # --- media --- an image is processed once it is registered: register_image and a completed
    # image upload both record image.uploaded in the transaction that records the image.
    Route("image.uploaded", "process_image", args=lambda e: (e["aggregate_id"],)),
    # --- messaging ---
    Route("message.created", "route_message", args=lambda e: (e["aggregate_id"],)),
    # --- media: embeddings ---
    Route("image.processed", "embed_image", args=lambda e: (e["aggregate_id"],)),
]

ANNOUNCED: list[str] = [
    "image.failed",
    "upload.completed",
    "upload.failed",
    "message.status",
]
