"""GitHub's webhook signature, ``X-Hub-Signature-256``: compute it, check it in constant time, and find
which secret applies to a repository. Pure: no I/O.

GitHub signs the raw body with the hook's secret: ``sha256=`` + hex HMAC-SHA256. The server checks it
before it stores an event; a client that holds the secret checks it again before it delivers one, so a
relay in between can neither forge nor alter an event unnoticed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gitstafette.constants import HEADER_SIGNATURE_256
from gitstafette.exceptions import ConfigError
from gitstafette.github.webhook import repository_in_body
from gitstafette.security.secret import Secret

__all__ = ["WebhookSecrets", "signature_256", "signature_problem"]

_PREFIX = "sha256="
_NAME = re.compile(r"[\w.-]+/[\w.-]+")


def signature_256(secret: Secret | str, body: bytes) -> str:
    """``X-Hub-Signature-256`` of ``body``: ``sha256=`` and the hex HMAC-SHA256 with the webhook secret."""
    key = secret.reveal() if isinstance(secret, Secret) else secret
    return _PREFIX + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def signature_problem(secret: Secret, body: bytes, header: str | None) -> str | None:
    """None when ``header`` is the signature of ``body`` with ``secret``; else what is wrong, in words that
    show neither the secret nor any signature."""
    received = (header or "").strip()
    if not received:
        return f"missing {HEADER_SIGNATURE_256} header"
    if not received.lower().startswith(_PREFIX):
        return f"{HEADER_SIGNATURE_256} is not sha256=<hex>"
    expected = signature_256(secret, body).encode()
    if not hmac.compare_digest(expected, received.lower().encode("utf-8", "replace")):
        return f"{HEADER_SIGNATURE_256} does not match the body"
    return None


@dataclass(frozen=True)
class WebhookSecrets:
    """The webhook secrets a server or client holds: one per repository (by id or owner/name), and a
    default for every other repository.

    :param by_name: keys in lower case.
    """

    default: Secret | None = None
    by_id: Mapping[str, Secret] = field(default_factory=dict)
    by_name: Mapping[str, Secret] = field(default_factory=dict)

    @classmethod
    def build(cls, default: Secret | None, per_repository: Mapping[str, Any], source: str = "") -> WebhookSecrets:
        """From a mapping of repository id or owner/name → secret (a secrets file); errors name the key and
        ``source``, never a value."""
        where = f"{source}: " if source else ""
        by_id: dict[str, Secret] = {}
        by_name: dict[str, Secret] = {}
        for key, value in per_repository.items():
            repository = str(key).strip()
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where}the secret of {repository!r} must be a non-empty string")
            if repository.isdigit():
                by_id[repository] = Secret(value.strip())
            elif _NAME.fullmatch(repository):
                by_name[repository.lower()] = Secret(value.strip())
            else:
                raise ConfigError(f"{where}{repository!r} is neither a GitHub repository id (digits) nor owner/name")
        return cls(default, by_id, by_name)

    @property
    def configured(self) -> bool:
        return self.default is not None or bool(self.by_id) or bool(self.by_name)

    def __len__(self) -> int:
        return len(self.by_id) + len(self.by_name) + (self.default is not None)

    def problem(self, repository_id: str, body: bytes, header: str | None, content_type: str = "") -> str | None:
        """Why the signature of an event for ``repository_id`` is not acceptable, or None when it is (or when
        no secret applies to the repository).

        A secret keyed by owner/name applies when the payload names that repository *with the same id*:
        the id routed the event, and an event cannot borrow another repository's secret by naming it.
        When owner/name secrets exist and the payload cannot tell the name, the event is refused rather
        than let through unsigned.
        """
        secret = self.by_id.get(repository_id)
        if secret is None and self.by_name:
            body_id, name = repository_in_body(body, content_type or "application/json")
            if body_id != repository_id or not name:
                return f"cannot tell which webhook secret applies: the payload does not name repository {repository_id}"
            secret = self.by_name.get(name.lower())
        secret = secret or self.default
        if secret is None:
            return None
        return signature_problem(secret, body, header)

    def __repr__(self) -> str:
        return (
            f"WebhookSecrets(default={'set' if self.default else 'none'}, "
            f"repositories={sorted(self.by_id) + sorted(self.by_name)})"
        )
