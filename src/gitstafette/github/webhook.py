"""Turn a webhook request (headers and raw body) into a ``WebhookEvent``, or say why not.

Repository hooks are routed by the ``X-GitHub-Hook-Installation-Target-ID`` header without parsing the
body; organization and GitHub App hooks by ``repository.id`` in the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from gitstafette.config import Watchlist
from gitstafette.exceptions import WebhookRejected
from gitstafette.model import WebhookEvent, relayed_headers

__all__ = ["parse_webhook", "repository_in_body"]

_FORM = "application/x-www-form-urlencoded"


def parse_webhook(
    headers: Mapping[str, str],
    raw_headers: list[tuple[str, str]],
    body: bytes,
    watchlist: Watchlist,
    received_at_ns: int,
    known_names: Mapping[str, str] | None = None,
) -> WebhookEvent:
    """Validate one webhook and route it to a repository.

    :param headers: the request headers by lower-case name.
    :param raw_headers: the request headers in the order received (names in any case).
    :param known_names: repository id → owner/name already known; a repository hook for an id listed here
        is routed without parsing its body at all.
    :raises WebhookRejected: 400 for a malformed request, 406 for one that is not for a watched repository.
    """
    delivery_id = headers.get("x-github-delivery", "").strip()
    if not delivery_id:
        raise WebhookRejected(400, "missing X-GitHub-Delivery header: not a GitHub webhook")
    event_type = headers.get("x-github-event", "").strip()
    if not event_type:
        raise WebhookRejected(400, "missing X-GitHub-Event header: not a GitHub webhook")
    if not body:
        raise WebhookRejected(400, "empty body: a GitHub webhook carries a JSON payload")

    target_type = headers.get("x-github-hook-installation-target-type", "").strip().lower()
    target_id = headers.get("x-github-hook-installation-target-id", "").strip()
    repository_id, full_name = "", ""
    if target_type == "repository" and target_id:
        repository_id = target_id
        if not watchlist.watches_id(repository_id) and watchlist.names:
            full_name = _name_of(repository_id, _payload(headers, body))
        elif known_names is not None and repository_id not in known_names and watchlist.watches_id(repository_id):
            # Once per repository: learn its owner/name, so clients can subscribe by name. A body that
            # does not parse is still relayed as it was for a repository hook routed by its header.
            try:
                full_name = _name_of(repository_id, _payload(headers, body))
            except WebhookRejected:
                pass
    else:
        repository_id, full_name = _repository(_payload(headers, body))
        if not repository_id:
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


def repository_in_body(body: bytes, content_type: str = "application/json") -> tuple[str, str]:
    """(id, owner/name) of the repository the payload names; empty strings when it names none or the
    body is not a payload at all."""
    try:
        return _repository(_payload({"content-type": content_type}, body))
    except WebhookRejected:
        return "", ""


def _payload(headers: Mapping[str, str], body: bytes) -> Any:
    """The JSON payload, sent as JSON or as the ``payload`` field of a form."""
    if headers.get("content-type", "").split(";")[0].strip().lower() == _FORM:
        try:
            fields = parse_qs(body.decode("latin-1"), max_num_fields=64)
        except ValueError as exc:  # more fields than max_num_fields
            raise WebhookRejected(400, f"form-encoded webhook not understood: {exc}") from exc
        if "payload" not in fields:
            raise WebhookRejected(400, "form-encoded webhook without a payload field")
        text: str | bytes = fields["payload"][0]
    else:
        text = body
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookRejected(400, f"body is not valid JSON: {exc}") from exc
    except RecursionError:  # arrays or objects nested deeper than the interpreter's recursion limit
        raise WebhookRejected(400, "body is not a GitHub payload: JSON nested too deeply") from None


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
