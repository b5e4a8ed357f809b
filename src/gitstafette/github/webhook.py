"""Turn a webhook request (headers and raw body) into a ``WebhookEvent``, or say why not.

Repository hooks are routed by the ``X-GitHub-Hook-Installation-Target-ID`` header without parsing the
body; organization and GitHub App hooks by ``repository.id`` in the body.

GitHub sends the payload, a JSON object, in one of two ways (the hook's "content type"):
``application/json``, the object as the body; or ``application/x-www-form-urlencoded`` ("form"), the
object URL-encoded as the one field ``payload=``. Either way the raw body is what is stored and relayed:
``X-Hub-Signature-256`` signs those bytes, so the target must get them unchanged. A body that is neither
is refused (``webhook_payload``): 415 for another content type, 400 for a body that is not a JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from gitstafette.exceptions import WebhookRejected
from gitstafette.model import Watchlist, WebhookEvent, relayed_headers

__all__ = [
    "ACCEPTED_CONTENT_TYPES",
    "FORM_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "parse_webhook",
    "repository_in_body",
    "routed_by_header",
    "webhook_payload",
]

JSON_CONTENT_TYPE = "application/json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
#: the two content types a GitHub hook can be configured with ("json" and "form")
ACCEPTED_CONTENT_TYPES = (JSON_CONTENT_TYPE, FORM_CONTENT_TYPE)

#: GitHub's form has one field; a few more are tolerated, a flood of them is not parsed.
_FORM_MAX_FIELDS = 64
_JSON_KINDS: dict[type, str] = {
    list: "a JSON array",
    str: "a JSON string",
    int: "a JSON number",
    float: "a JSON number",
    bool: "JSON true or false",
    type(None): "JSON null",
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: json.loads would accept NaN and Infinity, which are not JSON; one decoder, not one per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_webhook(
    headers: Mapping[str, str],
    raw_headers: list[tuple[str, str]],
    body: bytes,
    watchlist: Watchlist,
    received_at_ns: int,
    known_names: Mapping[str, str] | None = None,
) -> WebhookEvent:
    """Validate one webhook and route it to a repository.

    The checks come in this order: GitHub's headers and a body at all (400); the route; 406 for a
    repository that is not watched. A repository hook is routed by its header and its body is *not*
    judged here: the caller checks the signature first and the body (``webhook_payload``) after it
    (``Ingest``), so that a sender without the webhook secret learns nothing from a 401 but that it is
    one. An organization or App hook is routed by its body, which is judged first, here: 415 or 400
    when it is not a payload, then 406 when it names no repository.

    :param headers: the request headers by lower-case name.
    :param raw_headers: the request headers in the order received (names in any case).
    :param known_names: repository id → owner/name already known; a repository hook for an id listed here
        is routed without parsing its body at all.
    :raises WebhookRejected: 400 for a malformed request, 415 for a content type GitHub does not send,
        406 for one that is not for a watched repository.
    """
    delivery_id = headers.get("x-github-delivery", "").strip()
    if not delivery_id:
        raise WebhookRejected(400, "missing X-GitHub-Delivery header: not a GitHub webhook")
    event_type = headers.get("x-github-event", "").strip()
    if not event_type:
        raise WebhookRejected(400, "missing X-GitHub-Event header: not a GitHub webhook")
    if not body:
        raise WebhookRejected(400, "empty body: a GitHub webhook carries a JSON payload")
    content_type = headers.get("content-type")
    repository_id = routed_by_header(headers)
    full_name = ""
    if repository_id:
        # The name, where it is needed, is read from a body that may still be refused (after the
        # signature check); one that is not a payload, or of another content type, names nothing.
        if not watchlist.watches_id(repository_id) and watchlist.names:
            full_name = _name_of(repository_id, _payload_or_none(body, content_type))
        elif known_names is not None and repository_id not in known_names and watchlist.watches_id(repository_id):
            # Once per repository: learn its owner/name, so clients can subscribe by name.
            full_name = _name_of(repository_id, _payload_or_none(body, content_type))
    else:
        repository_id, full_name = _repository(webhook_payload(body, content_type))
        if not repository_id:
            target_type = headers.get("x-github-hook-installation-target-type", "").strip().lower()
            raise WebhookRejected(
                406,
                f"a {target_type or 'webhook'} {event_type!r} event without a repository: "
                "gitstafette relays repository events only",
            )
    if not watchlist.watches(repository_id, full_name):
        described = f"{repository_id} ({full_name})" if full_name else repository_id
        raise WebhookRejected(406, f"repository {described} is not watched by this server")
    return WebhookEvent(
        repository_id=repository_id,
        delivery_id=delivery_id,
        event_type=event_type,
        body=body,
        headers=relayed_headers(raw_headers),
        received_at_ns=received_at_ns,
        repository_name=full_name,
    )


def routed_by_header(headers: Mapping[str, str]) -> str:
    """The repository id of a repository hook (its target id header); empty for an organization or App
    hook, or a request without the headers, whose repository is the one its body names."""
    if headers.get("x-github-hook-installation-target-type", "").strip().lower() != "repository":
        return ""
    return headers.get("x-github-hook-installation-target-id", "").strip()


def repository_in_body(body: bytes, content_type: str | None = JSON_CONTENT_TYPE) -> tuple[str, str]:
    """(id, owner/name) of the repository the payload names; empty strings when it names none or the
    body is not a payload at all."""
    return _repository(_payload_or_none(body, content_type))


def _media_type(content_type: str | None) -> str:
    """The media type of ``content_type`` (lower case, without parameters), one of ``ACCEPTED_CONTENT_TYPES``.

    A missing or blank Content-Type counts as JSON: GitHub always sends one, but the original's gRPC
    clients push events without it, and the body is checked to be a JSON object all the same.

    :raises WebhookRejected: 415 for any other media type.
    """
    if content_type is None or not content_type.strip():
        return JSON_CONTENT_TYPE
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ACCEPTED_CONTENT_TYPES:
        raise WebhookRejected(
            415,
            f"Content-Type {content_type!r} is not supported: a GitHub webhook is "
            f"{JSON_CONTENT_TYPE} or {FORM_CONTENT_TYPE} (payload=<JSON>)",
        )
    return media_type


def webhook_payload(body: bytes, content_type: str | None = JSON_CONTENT_TYPE) -> dict[str, Any]:
    """The JSON object a webhook carries: the body itself, or the ``payload`` field of a form.

    JSON is UTF-8 (RFC 8259 §8.1, and what GitHub sends); other encodings that ``json.loads`` would guess
    are refused rather than stored for a target that may not guess the same.

    :raises WebhookRejected: 415 for a content type GitHub does not send; 400, naming what is wrong, for a
        body that is not a JSON object (not JSON, truncated, an array or a scalar, not UTF-8, a form
        without exactly one ``payload`` field, or whose payload is not a JSON object).
    """
    if _media_type(content_type) == FORM_CONTENT_TYPE:
        return _json_object(_form_payload(body), "the payload field of the form")
    return _json_object(body, "body")


def _form_payload(body: bytes) -> bytes:
    """The URL-decoded bytes of the one ``payload`` field of a form-encoded body."""
    try:
        # A URL-encoded form is ASCII: GitHub percent-encodes everything else. The values are decoded
        # to bytes (latin-1 maps each byte to itself) so that their UTF-8 is checked like a JSON body's.
        text = body.decode("ascii")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=_FORM_MAX_FIELDS, encoding="latin-1")
    except UnicodeDecodeError as exc:
        raise WebhookRejected(400, f"form-encoded body is not URL-encoded: byte {exc.start} is not ASCII") from None
    except ValueError as exc:  # more fields than max_num_fields
        raise WebhookRejected(400, f"form-encoded body not understood: {exc}") from None
    payloads = fields.get("payload", [])
    if not payloads:
        raise WebhookRejected(400, "form-encoded body without a payload field: GitHub sends payload=<JSON>")
    if len(payloads) > 1:
        # Which one would a target read? Refused rather than routed by one and read by another.
        raise WebhookRejected(400, f"form-encoded body with {len(payloads)} payload fields: GitHub sends one")
    return payloads[0].encode("latin-1")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` parsed as a UTF-8 JSON object; ``what`` names it in the error."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookRejected(400, f"{what} is not JSON in UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        payload = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        ends = " (it ends too soon: truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise WebhookRejected(400, f"{what} is not valid JSON{ends}: {exc}") from None
    except ValueError as exc:  # NaN, or an integer of more digits than int() converts
        raise WebhookRejected(400, f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested deeper than the interpreter's recursion limit
        raise WebhookRejected(400, f"{what} is not a GitHub payload: JSON nested too deeply") from None
    if not isinstance(payload, dict):
        kind = _JSON_KINDS.get(type(payload), "not an object")
        raise WebhookRejected(400, f"{what} is {kind}, not the JSON object of a GitHub payload")
    return payload


def _payload_or_none(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    try:
        return webhook_payload(body, content_type)
    except WebhookRejected:
        return None


def _name_of(repository_id: str, payload: Any) -> str:
    """The owner/name the payload gives for ``repository_id``; empty when it describes another repository.

    A name is what watchlists and client tokens may grant by: it is only taken from a payload about the
    very repository the hook was routed to.
    """
    body_id, full_name = _repository(payload)
    return full_name if body_id == repository_id else ""


def _repository(payload: Any) -> tuple[str, str]:
    """(id, full_name) of ``payload["repository"]``, or empty strings."""
    repository = payload.get("repository") if isinstance(payload, dict) else None
    if not isinstance(repository, dict):
        return "", ""
    repository_id = repository.get("id")
    if isinstance(repository_id, bool) or not isinstance(repository_id, int | str) or not str(repository_id).isdigit():
        return "", ""
    full_name = repository.get("full_name")
    return str(repository_id), full_name if isinstance(full_name, str) else ""
