"""Error classes that decide how a failed job is treated.

PermanentError: retrying cannot help (bad payload, missing entity, undecodable file).
The job is not retried and goes to the dead-letter store at once.

TransientError: a dependency failed (timeout, connection refused, 5xx). The job is
retried with exponential backoff, then dead-lettered.
"""


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""


class PermanentError(DomainError):
    """Retrying will not help."""


class TransientError(DomainError):
    """A dependency failed; retrying later may succeed."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the dependency asked us to wait (for example HTTP Retry-After).
        self.retry_after = retry_after


class InvalidPayload(PermanentError):
    """A message or request carries arguments that cannot be valid."""


class NotFound(PermanentError):
    """The entity a job refers to does not exist."""


class InvalidImage(PermanentError):
    """The bytes are not a decodable image we accept."""


class InvalidKey(PermanentError):
    """An object-store key that is empty, absolute or escapes its prefix."""


# --- messaging ---
class RateLimited(TransientError):
    """The channel refused a send because one of its rate limits was hit (its answer, not our own
    pacing). ``scope`` says whose limit: ``recipient`` (the pair rate to one recipient),
    ``sender`` (the business number's throughput) or ``account`` (an app- or account-level limit).
    Retried after ``retry_after``, and the pacer holds that scope as long for every worker. A
    circuit breaker counts only ``account`` limits: the others are flow control from a channel
    that works."""

    def __init__(self, message: str, *, scope: str, retry_after: float | None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.scope = scope


class Paced(DomainError):
    """Sending now would go over a rate the channel allows (atelier's own pacing, decided before
    the channel is called): the message waits ``wait_s`` seconds and runs again. Not a failure:
    no retry is spent, a circuit breaker does not count it, nothing is recorded on the delivery."""

    def __init__(self, message: str, *, wait_s: float) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class DeliveryInFlight(DomainError):
    """Another run is sending this delivery right now (its lease has not expired).

    Neither permanent nor a dependency failure: retried later, and a circuit breaker does not
    count it, since the channel did nothing wrong.
    """


class SendNotRecorded(DomainError):
    """The channel accepted the message but its SENT record could not be committed (the database
    of record is down). ``receipt`` is the channel's answer (a SendReceipt): the retry carries it
    and records it instead of sending again. Not a failure of the channel: its circuit ignores it."""

    def __init__(self, message: str, receipt: object) -> None:
        super().__init__(message)
        self.receipt = receipt
# --- media: embeddings ---
class ModelUnavailable(TransientError):
    """The embedding model cannot be loaded (weights missing, unknown model, no GPU). Messages
    that need it are retried with backoff, then dead-lettered with this reason: never lost."""


class IndexUnavailable(TransientError):
    """The vector index cannot be reached or opened (server down, local path held by another process)."""


class Cancelled(DomainError):
    """The job was cancelled while it ran (raised at its next progress point). Not a failure:
    it is not retried and leaves no dead letter; its job record says ``cancelled``."""
