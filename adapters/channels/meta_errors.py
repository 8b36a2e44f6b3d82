"""Meta's error codes (WhatsApp Cloud API, Instagram Messaging, the Graph API under both), as data,
and the classification of an error answer by its code.

Meta answers most errors, rate limits included, with HTTP 400 and an envelope::

    {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
               "error_subcode": 2494055, "error_data": {"messaging_product": "whatsapp",
               "details": "Message failed to send because ..."}, "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}}

and says to build error handling on ``code`` (and ``details``), not on the HTTP status or the
title. So the answer is classified by ``code`` (with ``error_subcode`` where a row names one) in
REFERENCE; a code not in it falls back to the HTTP status (429 rate limited, 5xx transient, any
other status permanent). Each row cites the page it comes from (SOURCES); docs/messaging.md shows
the table. tests/integration/test_meta_errors.py has a test per row.

What each outcome becomes (domain/errors.py):

- PERMANENT: PermanentError, the delivery FAILED and dead-lettered at once.
- TRANSIENT: TransientError, retried with backoff (or after ``wait_s``); a circuit breaker counts it.
- RATE_LIMITED: RateLimited with a ``scope`` and a wait that fits the limit: the pair rate
  (``recipient``) waits at least the pair interval, throughput (``sender``) about a second, app-
  and account-level limits (``account``) a minute or more. Retry-After, when given, is a floor.

Every error's message carries the channel, the code (and subcode), the title, Meta's details or
message, what to do about it, the HTTP status and the fbtrace_id Meta's support asks for.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from domain.errors import DomainError, PermanentError, RateLimited, TransientError

#: Where each row comes from.
SOURCES = {
    "wa-errors": "https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes",
    "wa-throughput": "https://developers.facebook.com/documentation/business-messaging/whatsapp/throughput",
    "graph-errors": "https://developers.facebook.com/docs/graph-api/guides/error-handling",
    "graph-rate-limits": "https://developers.facebook.com/docs/graph-api/overview/rate-limiting",
    "messenger-errors": "https://developers.facebook.com/documentation/business-messaging/messenger-platform/error-codes",
}

WHATSAPP = frozenset({"whatsapp"})
INSTAGRAM = frozenset({"instagram"})
BOTH = WHATSAPP | INSTAGRAM


class Outcome(enum.StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    RATE_LIMITED = "rate_limited"


#: The wait of an app- or account-level limit when Meta gives none: those count calls over an
#: hour (Graph API rate limits), so retrying within seconds only spends more of them.
ACCOUNT_LIMIT_WAIT_S = 60.0


@dataclass(frozen=True)
class MetaCode:
    """One row: ``code`` (to ``last`` for a range), ``subcode`` when the row needs one, the
    channels it applies to, Meta's title, the outcome, the rate limit's scope, the wait when Meta
    gives none (None: the backoff, or for the pair rate the configured pair interval), what to do,
    and the source."""

    code: int
    title: str
    outcome: Outcome
    hint: str
    source: str
    channels: frozenset[str] = BOTH
    subcode: int | None = None
    last: int | None = None
    scope: str | None = None
    wait_s: float | None = None


P, T, R = Outcome.PERMANENT, Outcome.TRANSIENT, Outcome.RATE_LIMITED

REFERENCE: tuple[MetaCode, ...] = (
    # Graph API codes, shared by both channels.
    MetaCode(0, "AuthException", P, "get a new access token", "wa-errors"),
    MetaCode(1, "API Unknown", T, "possibly a temporary issue on Meta's side: retried", "graph-errors"),
    MetaCode(2, "API Service", T, "temporary downtime or overload: retried", "graph-errors"),
    MetaCode(3, "API Method", P, "the app lacks the capability or permission for this call", "wa-errors"),
    MetaCode(4, "API Too Many Calls", R, "the app reached its call rate limit: waiting", "graph-rate-limits",
             scope="account", wait_s=ACCOUNT_LIMIT_WAIT_S),
    MetaCode(10, "Permission denied", P, "the permission is not granted or was removed", "wa-errors"),
    MetaCode(17, "API User Too Many Calls", R, "the account reached its call rate limit: waiting",
             "graph-rate-limits", scope="account", wait_s=ACCOUNT_LIMIT_WAIT_S),
    MetaCode(32, "Page-level throttling", R, "the page or account reached its call rate limit: waiting",
             "graph-rate-limits", scope="account", wait_s=ACCOUNT_LIMIT_WAIT_S),
    MetaCode(100, "Invalid parameter", P, "the request has an unsupported or misspelled parameter", "wa-errors"),
    MetaCode(190, "Access token has expired", P, "get a new access token (WHATSAPP_TOKEN / INSTAGRAM_TOKEN)",
             "wa-errors"),
    MetaCode(190, "Access token has expired", P, "get a new access token", "graph-errors", subcode=463),
    MetaCode(190, "Access token is invalid", P, "the token was invalidated: get a new one", "graph-errors",
             subcode=467),
    MetaCode(200, "API Permission", P, "the permission is not granted or was removed", "wa-errors", last=299),
    MetaCode(341, "Application limit reached", R, "the app reached a limit: waiting", "graph-errors",
             scope="account", wait_s=ACCOUNT_LIMIT_WAIT_S),
    MetaCode(368, "Temporarily blocked for policies violations", P,
             "the account is restricted for a policy violation: see Meta's policy enforcement", "wa-errors"),
    MetaCode(613, "Calls to this API have exceeded the rate limit", R, "custom-level throttling: waiting",
             "graph-rate-limits", scope="account", wait_s=ACCOUNT_LIMIT_WAIT_S),
    # Instagram Messaging (the Messenger Platform's Send API).
    MetaCode(10, "Message sent outside of allowed window", P,
             "the customer must write first (Instagram has no templates to reopen a conversation)",
             "messenger-errors", channels=INSTAGRAM, subcode=2018278),
    MetaCode(100, "No matching user found", P, "the recipient id is not a user this account can message",
             "messenger-errors", channels=INSTAGRAM, subcode=2018001),
    MetaCode(551, "This person isn't available right now", P,
             "the person blocked the account or cannot receive messages", "messenger-errors", channels=INSTAGRAM),
    MetaCode(1200, "Temporary send message failure", T, "retried", "messenger-errors", channels=INSTAGRAM),
    # WhatsApp Cloud API.
    MetaCode(33, "Parameter value is not valid", P, "the business phone number was deleted: check "
             "WHATSAPP_PHONE_NUMBER_ID", "wa-errors", channels=WHATSAPP),
    MetaCode(80007, "Rate limit issues", R, "the WhatsApp Business Account reached its rate limit: waiting",
             "wa-errors", channels=WHATSAPP, scope="account", wait_s=ACCOUNT_LIMIT_WAIT_S),
    MetaCode(130429, "Rate limit hit", R, "the number's throughput was reached: waiting (see "
             "WHATSAPP_SEND_RATE_PER_S)", "wa-throughput", channels=WHATSAPP, scope="sender", wait_s=1.0),
    MetaCode(130472, "User's number is part of an experiment", P, "Meta held the message back for an "
             "experiment", "wa-errors", channels=WHATSAPP),
    MetaCode(130497, "Business account is restricted from messaging users in this country", P,
             "the recipient's country is restricted for this account", "wa-errors", channels=WHATSAPP),
    MetaCode(131000, "Something went wrong", T, "an unknown error at Meta: retried", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131005, "Access denied", P, "the permission is not granted or was removed", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131008, "Required parameter is missing", P, "the request lacks a required parameter", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131009, "Parameter value is not valid", P, "a parameter's value is not valid", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131016, "Service unavailable", T, "a Meta service is temporarily unavailable: retried", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131021, "Recipient cannot be sender", P, "the recipient is the business number itself", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131026, "Message undeliverable", P, "the recipient is not on WhatsApp, has not accepted its terms, "
             "or runs an old version", "wa-errors", channels=WHATSAPP),
    MetaCode(131030, "Recipient phone number not in allowed list", P, "add the recipient to the test number's "
             "allowed list", "wa-errors", channels=WHATSAPP),
    MetaCode(131031, "Account has been locked", P, "the account is restricted or a two-step pin is wrong",
             "wa-errors", channels=WHATSAPP),
    MetaCode(131037, "WhatsApp provided number needs display name approval", P, "the number's display name "
             "must be approved first", "wa-errors", channels=WHATSAPP),
    MetaCode(131042, "Business eligibility payment issue", P, "fix the account's payment method", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131045, "Incorrect certificate", P, "the phone number's registration is broken: register it again",
             "wa-errors", channels=WHATSAPP),
    MetaCode(131047, "Re-engagement message", P, "more than 24 hours passed since the customer last wrote: "
             "outside the customer-service window only a template message can be sent, so send a template",
             "wa-errors", channels=WHATSAPP),
    MetaCode(131048, "Spam rate limit hit", R, "too many messages from this number were blocked or flagged as "
             "spam: waiting; check the number's quality in WhatsApp Manager", "wa-errors", channels=WHATSAPP,
             scope="account", wait_s=300.0),
    MetaCode(131049, "This message was not delivered to maintain healthy ecosystem engagement", P,
             "Meta limits the marketing messages one user gets: do not resend soon", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131050, "User stopped marketing messages", P, "the customer opted out of marketing messages",
             "wa-errors", channels=WHATSAPP),
    MetaCode(131051, "Unsupported message type", P, "this message type is not supported", "wa-errors",
             channels=WHATSAPP),
    MetaCode(131053, "Media upload error", P, "the media could not be fetched or its type is not supported",
             "wa-errors", channels=WHATSAPP),
    MetaCode(131056, "(Business Account, Consumer Account) pair rate limit hit", R, "too many messages to this "
             "recipient in a short time: waiting the pair interval (WHATSAPP_PAIR_INTERVAL_S)", "wa-errors",
             channels=WHATSAPP, scope="recipient"),
    MetaCode(131057, "Account in maintenance mode", T, "the number is being upgraded (up to a minute): retried",
             "wa-throughput", channels=WHATSAPP, wait_s=60.0),
    MetaCode(132000, "Template Param Count Mismatch", P, "the template's parameters do not match its "
             "variables", "wa-errors", channels=WHATSAPP),
    MetaCode(132001, "Template does not exist", P, "no approved template with this name and language",
             "wa-errors", channels=WHATSAPP),
    MetaCode(132005, "Template Hydrated Text Too Long", P, "the text with its parameters is too long",
             "wa-errors", channels=WHATSAPP),
    MetaCode(132007, "Template Format Character Policy Violated", P, "the template's content breaks a "
             "WhatsApp policy", "wa-errors", channels=WHATSAPP),
    MetaCode(132012, "Template Parameter Format Mismatch", P, "a parameter's format does not match the "
             "template's", "wa-errors", channels=WHATSAPP),
    MetaCode(132015, "Template is Paused", P, "the template was paused for low quality", "wa-errors",
             channels=WHATSAPP),
    MetaCode(132016, "Template is Disabled", P, "the template was disabled for low quality", "wa-errors",
             channels=WHATSAPP),
    MetaCode(132068, "Flow is in blocked state", P, "the flow is blocked", "wa-errors", channels=WHATSAPP),
    MetaCode(133004, "Server temporarily unavailable", T, "retried", "wa-errors", channels=WHATSAPP),
    MetaCode(133010, "Phone number not registered", P, "register the business number with the Cloud API",
             "wa-errors", channels=WHATSAPP),
    MetaCode(135000, "Generic user error", P, "Meta could not process the request", "wa-errors",
             channels=WHATSAPP),
)


def lookup(channel: str, code: int, subcode: int | None = None) -> MetaCode | None:
    """The row for ``code`` (and ``subcode``: a row naming it wins over the code's own) on
    ``channel``; None for a code the reference does not know."""
    found = None
    for row in REFERENCE:
        if channel not in row.channels or not (row.code <= code <= (row.last or row.code)):
            continue
        if row.subcode is not None and row.subcode == subcode:
            return row
        if row.subcode is None and found is None:
            found = row
    return found


#: Meta's messages start with the code, "(#131056) ...": the reason names it once.
_CODE_PREFIX = re.compile(r"^\(#\d+\)\s*")


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _text(value: Any, limit: int = 300) -> str:
    return " ".join(str(value).split())[:limit] if value not in (None, "") else ""


def classify(channel: str, status: int, body: Any, *, retry_after: float | None = None,
             pair_interval_s: float = 0.0, raw: str = "") -> DomainError:
    """The error for a channel's non-2xx answer: ``body`` is its decoded JSON (or anything else),
    ``retry_after`` its Retry-After in seconds, ``pair_interval_s`` the least wait of a pair-rate hit."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code, subcode = _int(error.get("code")), _int(error.get("error_subcode"))
    data = error.get("error_data") if isinstance(error.get("error_data"), dict) else {}
    said = _text(data.get("details")) or _text(error.get("error_user_msg")) \
        or _CODE_PREFIX.sub("", _text(error.get("message"))) or _text(raw, 200)
    trace = _text(error.get("fbtrace_id"), 64)
    row = lookup(channel, code, subcode) if code is not None else None
    number = f"{code}" + (f"/{subcode}" if subcode is not None else "") if code is not None else "no code"
    title = row.title if row else (_text(error.get("error_user_title")) or _text(error.get("type")) or "unknown")
    outcome = row.outcome if row else (Outcome.RATE_LIMITED if status == 429 else
                                       Outcome.TRANSIENT if status >= 500 else Outcome.PERMANENT)
    hint = row.hint if row else "not in atelier's table of Meta's codes: classified by its HTTP status"
    where = f"HTTP {status}" + (f", fbtrace_id {trace}" if trace else "")
    message = f"{channel}: {number} {title}: {said or 'no details'} ({hint}; {where})"[:1500]
    if outcome is Outcome.PERMANENT:
        return PermanentError(message)
    if outcome is Outcome.TRANSIENT:
        wait = max(retry_after or 0.0, (row.wait_s if row else None) or 0.0)
        return TransientError(message, retry_after=wait or None)  # None: the ordinary backoff
    scope = row.scope if row and row.scope else "sender"
    least = pair_interval_s if scope == "recipient" else (row.wait_s if row and row.wait_s else 1.0)
    return RateLimited(message, scope=scope, retry_after=max(retry_after or 0.0, least or 1.0))


def markdown_table() -> str:
    """The reference as the table in docs/messaging.md (tests/unit/test_meta_table_doc.py keeps
    them equal: ``python -c 'from adapters.channels.meta_errors import markdown_table as t; print(t())'``)."""
    outcome = {Outcome.PERMANENT: "permanent", Outcome.TRANSIENT: "transient", Outcome.RATE_LIMITED: "rate limited"}
    lines = ["| code | channels | title | outcome | wait | source |", "|---|---|---|---|---|---|"]
    for row in REFERENCE:
        code = f"{row.code}-{row.last}" if row.last else f"{row.code}" + (f"/{row.subcode}" if row.subcode else "")
        channels = "both" if row.channels == BOTH else next(iter(row.channels))
        kind = outcome[row.outcome] + (f" ({row.scope})" if row.scope else "")
        wait = ("pair interval" if row.scope == "recipient" else f"{row.wait_s:g} s" if row.wait_s
                else "backoff" if row.outcome is Outcome.TRANSIENT else "")
        lines.append(f"| {code} | {channels} | {row.title} | {kind} | {wait} | [{row.source}] |")
    lines.append("")
    lines.extend(f"[{key}]: {url}" for key, url in SOURCES.items())
    return "\n".join(lines)
