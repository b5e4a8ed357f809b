"""Post a webhook payload the way GitHub does (``gitstafette send-webhook``): for trying out a server."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import typer

from gitstafette import __version__
from gitstafette.constants import (
    HEADER_DELIVERY,
    HEADER_EVENT,
    HEADER_SIGNATURE_256,
    HEADER_TARGET_ID,
    HEADER_TARGET_TYPE,
)
from gitstafette.exceptions import WebhookRejected
from gitstafette.github.signature import signature_256
from gitstafette.github.webhook import JSON_CONTENT_TYPE, webhook_payload

__all__ = ["event_from_file_name", "github_headers", "send_webhook", "signature_256"]


def event_from_file_name(path: Path) -> str:
    """``pull_request.opened.0.json`` → ``pull_request``."""
    return path.name.split(".")[0]


def _target(payload: Any, repository_id: str) -> tuple[str, str]:
    """(installation target type, id): the repository when there is one, else the organization."""
    if repository_id:
        return "repository", repository_id
    if isinstance(payload, dict):
        for kind, key in (("repository", "repository"), ("organization", "organization")):
            item = payload.get(key)
            if isinstance(item, dict) and item.get("id") is not None:
                return kind, str(item["id"])
    return "", ""


def github_headers(
    body: bytes, event: str, *, secret: str = "", repository_id: str = "", delivery_id: str = ""
) -> dict[str, str]:
    """The headers GitHub sends with ``body``; the target id comes from ``repository_id`` or the payload."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    headers = {
        HEADER_EVENT: event,
        HEADER_DELIVERY: delivery_id or str(uuid.uuid4()),
        "User-Agent": f"GitHub-Hookshot/gitstafette-{__version__}",
        "Content-Type": JSON_CONTENT_TYPE,
    }
    target_type, target_id = _target(payload, repository_id)
    if target_type:
        headers[HEADER_TARGET_TYPE] = target_type
        headers[HEADER_TARGET_ID] = target_id
    if secret:
        headers[HEADER_SIGNATURE_256] = signature_256(secret, body)
    return headers


def send_webhook(
    path: Path, url: str, *, event: str = "", secret: str = "", repository_id: str = "", timeout_s: float = 30.0
) -> tuple[dict[str, str], httpx.Response]:
    """POST the payload file ``path`` to ``url``; the headers sent and the response.

    :raises typer.BadParameter: the file is not a JSON object, which a server refuses with 400 (a usage
        error, printed as such by the CLI before anything is sent).
    """
    body = path.read_bytes()
    try:
        webhook_payload(body, JSON_CONTENT_TYPE)
    except WebhookRejected as exc:
        # BadParameter: click prints it as a usage error naming the argument, without a traceback.
        raise typer.BadParameter(f"{path} is not a webhook payload: {exc.detail}", param_hint="'FILE'") from None
    headers = github_headers(body, event or event_from_file_name(path), secret=secret, repository_id=repository_id)
    with httpx.Client(timeout=timeout_s) as http:
        response = http.post(url, content=body, headers=headers)
    return headers, response
