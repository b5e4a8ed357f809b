"""Who asks the state API, and what they may see: a bearer token → a :class:`Principal` with scopes.

- the admin token (or any request on a server without tokens, as the REST read API): ``read``,
  ``read:payload`` and ``admin``, every repository;
- a client token of the tokens file: ``read``, its own repositories and its own client id only;
- the original's ``OAUTH_TOKEN``: ``read``, every repository.

No token, or an unknown one: no principal (HTTP 401). The token itself is never kept, logged or answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitstafette.constants import METADATA_AUTHORIZATION
from gitstafette.exceptions import AuthError
from gitstafette.model import Watchlist
from gitstafette.server.auth import Authenticator

__all__ = ["ADMIN", "PAYLOAD", "READ", "Principal", "StateRefused", "principal_for"]

#: may read the state (repositories, events' headers, clients, dead letters, the audit trail)
READ = "read"
#: may also read the events' bodies
PAYLOAD = "read:payload"
#: may change things (mutations)
ADMIN = "admin"


class StateRefused(Exception):
    """A query asked for what its token may not see (its message is the GraphQL error's)."""


@dataclass(frozen=True)
class Principal:
    """What one request may see.

    :param client_id: a client token's client id: only its own connections are shown; empty for the others.
    :param source: for logs, never the token.
    """

    scopes: frozenset[str]
    repositories: Watchlist
    client_id: str = ""
    source: str = ""

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def require(self, scope: str, what: str) -> None:
        if scope not in self.scopes:
            raise StateRefused(f"{what} needs the scope {scope!r}, which this token does not have")

    def allows(self, repository_id: str, full_name: str = "") -> bool:
        return self.repositories.watches(repository_id, full_name)

    def sees_client(self, client_id: str) -> bool:
        return not self.client_id or client_id == self.client_id


_EVERYTHING = Watchlist(everything=True)
_ADMIN = Principal(frozenset({READ, PAYLOAD, ADMIN}), _EVERYTHING, source="admin token")
_OPEN = Principal(frozenset({READ, PAYLOAD, ADMIN}), _EVERYTHING, source="no tokens configured")


def principal_for(auth: Authenticator, authorization: str | None) -> Principal | None:
    """The principal of an HTTP ``Authorization`` header, or None: refuse the request."""
    if not auth.admin_required:
        return _OPEN
    if auth.admin_allows(authorization):
        return _ADMIN
    if not auth.required or not authorization:
        return None  # no client tokens: nothing but the admin token opens the API
    try:
        grant = auth.authenticate([(METADATA_AUTHORIZATION, authorization)])
    except AuthError:
        return None
    return Principal(frozenset({READ}), grant.repositories, grant.client_id, grant.source)
