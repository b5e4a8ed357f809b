"""Who may call the gRPC API, which repositories each caller may read, and the REST API's admin token.

A client sends ``authorization: Bearer <token>`` with every call. The server knows tokens only by their
SHA-256 (the tokens file), plus the original's single ``OAUTH_TOKEN``. A token is random and long, so a
fast hash is enough to make a leaked tokens file useless, and finding the grant of a presented token is
one hash and one dictionary look-up.

Two layers, each where it is simplest:

- :class:`AuthInterceptor` *authenticates* every call of ``gitstafette.v1.Gitstafette`` before its handler
  runs (no token, or an unknown one → ``UNAUTHENTICATED``), so an RPC added later cannot forget it and a
  refused stream is never read. ``info.Info``, health and reflection stay open: they tell nothing about
  events.
- The servicer *authorizes* each request against the caller's :class:`Grant` (from
  :meth:`Authenticator.grant`): a repository outside it → ``PERMISSION_DENIED``. Only the servicer knows
  which repositories a request reads (ids, owner/name resolved through the store).

Tokens file (YAML or TOML)::

    tokens:
      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08   # gitstafette hash-token
        client_id: jenkins
        repositories: ["186853002", "octo-org/deploy"]    # or ["*"]

SIGHUP re-reads it (and the admin token file). Streams go on untouched when their token still grants what
they read; a stream whose token is gone ends with ``UNAUTHENTICATED``, one whose grant no longer covers it
with ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from gitstafette.config import ServerConfig
from gitstafette.constants import METADATA_AUTHORIZATION
from gitstafette.exceptions import AuthError, ConfigError
from gitstafette.model import Watchlist
from gitstafette.security.secret_files import read_mapping_file, read_secret_file

__all__ = [
    "OPEN",
    "AuthError",
    "AuthInterceptor",
    "Authenticator",
    "Grant",
    "Session",
    "hash_token",
    "load_tokens",
]

logger = logging.getLogger(__name__)

#: Calls of this service need a token; every other service of the server is open.
GUARDED_PREFIX = "/gitstafette.v1.Gitstafette/"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: How long a refused streaming call is given to deliver its first message.
REFUSAL_READ_S = 1.0


def hash_token(token: str) -> str:
    """The SHA-256 of a token, as the tokens file holds it (lower-case hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What one token may do.

    :param client_id: the client id of everything done with the token (cursors); empty when the request
        names it (``OAUTH_TOKEN``, or a server without tokens).
    :param token_sha256: which token this is, so that a reload can find it again; empty for :data:`OPEN`.
    :param source: for logs: where the grant comes from, never the token.
    """

    client_id: str
    repositories: Watchlist
    token_sha256: str = ""
    source: str = ""

    def allows(self, repository_id: str = "", full_name: str = "") -> bool:
        return self.repositories.watches(repository_id, full_name)

    def allows_spec(self, spec: str) -> bool:
        """Whether the grant names ``spec`` (an id or owner/name) itself, without looking anything up."""
        return self.allows(spec, "") if spec.isdigit() else self.allows("", spec)

    def client_id_for(self, claimed: str) -> str:
        """The client id to use: the token's own, whatever the request claims."""
        return self.client_id or claimed

    def __repr__(self) -> str:
        return f"Grant(client_id={self.client_id!r}, repositories={str(self.repositories)!r}, source={self.source!r})"


#: The grant of every call on a server without client tokens.
OPEN = Grant("", Watchlist(everything=True), source="no client tokens configured")


def _repositories(entry: dict[str, Any], where: str) -> Watchlist:
    items = entry.get("repositories")
    if isinstance(items, str | int):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: repositories must list repository ids, owner/name or *")
    try:
        return Watchlist.parse(",".join(str(item) for item in items))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_tokens(path: str) -> dict[str, Grant]:
    """The tokens file: SHA-256 of each token → its grant. Errors name the entry, never a value (a raw
    token pasted where its hash belongs must not end up in a log)."""
    data = read_mapping_file(path, "tokens-file")
    entries = data.get("tokens", [])
    if not isinstance(entries, list):
        raise ConfigError(f"tokens-file {path}: 'tokens' must be a list of entries")
    grants: dict[str, Grant] = {}
    for number, entry in enumerate(entries, 1):
        where = f"tokens-file {path}, entry {number}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected sha256, client_id and repositories")
        unknown = set(entry) - {"sha256", "client_id", "repositories"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (expected sha256, client_id, repositories)")
        digest = str(entry.get("sha256", "")).strip().lower().removeprefix("sha256:")
        if not _SHA256_HEX.fullmatch(digest):
            raise ConfigError(
                f"{where}: sha256 is not the 64 hex digits of a SHA-256 (make it with: gitstafette hash-token)"
            )
        client_id = str(entry.get("client_id", "")).strip()
        if not client_id:
            raise ConfigError(f"{where}: client_id is required")
        if digest in grants:
            raise ConfigError(f"{where}: the same token as the entry of client {grants[digest].client_id!r}")
        grants[digest] = Grant(client_id, _repositories(entry, where), digest, f"tokens file ({client_id})")
    return grants


def _bearer(value: str | bytes | None) -> str | None:
    """The token of ``Bearer <token>``; None when there is none."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Session:
    """A stream and what it reads, looked at again whenever the tokens are reloaded.

    :param repositories: (id, owner/name) pairs the stream reads; either may be empty.
    """

    def __init__(self, grant: Grant, repositories: Iterable[tuple[str, str]]) -> None:
        self.grant = grant
        self.repositories = list(repositories)
        #: why the stream must end: set once by a reload
        self.ended: tuple[grpc.StatusCode, str] | None = None
        self.revoked = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    def on_revoke(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def revoke(self, code: grpc.StatusCode, message: str) -> None:
        if self.ended is not None:
            return
        self.ended = (code, message)
        self.revoked.set()
        for callback in self._callbacks:
            callback()


class Authenticator:
    """The server's tokens: checks calls, grants, the admin token; reloads on request (SIGHUP)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        #: whether gRPC calls need a token at all
        self.required = config.client_auth
        self._oauth_sha256 = hash_token(config.oauth_token.reveal()) if config.oauth_token else ""
        self._grants = load_tokens(config.tokens_file) if config.tokens_file else {}
        self._admin_sha256 = self._load_admin()
        self._sessions: set[Session] = set()

    def _load_admin(self) -> bytes | None:
        token = self.config.admin_token
        if self.config.admin_token_file:
            token = read_secret_file(self.config.admin_token_file, "admin-token-file")
        return hashlib.sha256(token.reveal().encode()).digest() if token else None

    @property
    def token_count(self) -> int:
        return len(self._grants) + bool(self._oauth_sha256)

    # ---- gRPC ----------------------------------------------------------------------------------

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Grant:
        """The grant of the token in ``metadata``; raises :class:`AuthError` (UNAUTHENTICATED)."""
        if not self.required:
            return OPEN
        values = [value for key, value in metadata or () if key.lower() == METADATA_AUTHORIZATION]
        if not values:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED,
                "no token: send metadata 'authorization: Bearer <token>' "
                "(gitstafette client --token or GITSTAFETTE_TOKEN)",
            )
        token = _bearer(values[0])
        if token is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "the authorization metadata is not 'Bearer <token>'")
        digest = hash_token(token)
        grant = self._grants.get(digest)
        if grant is not None:
            return grant
        if self._oauth_sha256 and hmac.compare_digest(digest, self._oauth_sha256):
            return Grant("", Watchlist(everything=True), digest, "OAUTH_TOKEN")
        raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")

    async def grant(self, context: grpc.aio.ServicerContext) -> Grant:
        """The caller's grant, or abort the call (its token may have been removed since the interceptor)."""
        try:
            return self.authenticate(context.invocation_metadata())
        except AuthError as exc:
            await context.abort(exc.code, exc.message)
            raise  # abort raised already; this keeps the type checker sure of it

    @contextmanager
    def session(self, grant: Grant, repositories: Iterable[tuple[str, str]]) -> Iterator[Session]:
        """Track a stream for the time of the ``with`` block, so a reload can end it."""
        tracked = Session(grant, repositories)
        self._sessions.add(tracked)
        try:
            yield tracked
        finally:
            self._sessions.discard(tracked)

    # ---- reload --------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the tokens file and the admin token file. A file that cannot be used leaves everything as
        it was (and says why); False then."""
        try:
            grants = load_tokens(self.config.tokens_file) if self.config.tokens_file else {}
            admin = self._load_admin()
        except ConfigError as exc:
            logger.error("reload refused, the tokens in use stay: %s", exc)
            return False
        self._grants, self._admin_sha256 = grants, admin
        ended = sum(self._recheck(session) for session in list(self._sessions))
        logger.info(
            "tokens reloaded: %d client tokens%s; %d open streams checked, %d ended",
            len(grants),
            " and OAUTH_TOKEN" if self._oauth_sha256 else "",
            len(self._sessions),
            ended,
        )
        return True

    def _recheck(self, session: Session) -> bool:
        """End the session if its token no longer grants what it reads; True if it was ended."""
        old = session.grant
        if not old.token_sha256 or old.token_sha256 == self._oauth_sha256:
            return False  # an open server, or the environment's OAUTH_TOKEN: neither changes on reload
        new = self._grants.get(old.token_sha256)
        if new is None:
            session.revoke(grpc.StatusCode.UNAUTHENTICATED, "the token of this stream was revoked")
            return True
        denied = self._denied(new, session.repositories)
        if new.client_id != old.client_id or denied:
            what = f"repositories {', '.join(denied)}" if denied else f"client id {old.client_id}"
            session.revoke(grpc.StatusCode.PERMISSION_DENIED, f"the token may no longer read {what}")
            return True
        session.grant = new
        return False

    @staticmethod
    def _denied(grant: Grant, repositories: Iterable[tuple[str, str]]) -> list[str]:
        return [rid or name for rid, name in repositories if not grant.allows(rid, name)]

    # ---- the REST read API ---------------------------------------------------------------------

    @property
    def admin_required(self) -> bool:
        return self.config.admin_auth

    @property
    def admin_configured(self) -> bool:
        return self._admin_sha256 is not None

    def admin_allows(self, authorization: str | None) -> bool:
        """Whether an HTTP ``Authorization`` header carries the admin token (compared in constant time)."""
        if not self.admin_required:
            return True
        token = _bearer(authorization)
        if token is None or self._admin_sha256 is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._admin_sha256)


def _refusal(handler: grpc.RpcMethodHandler, error: AuthError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``error`` at once."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        if handler.request_streaming:
            # Take the first message the caller is sending before ending the call: a status that overtakes
            # a message still being written reaches some clients as INTERNAL instead of this one.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(aiter(request), None), REFUSAL_READ_S)
        await context.abort(error.code, error.message)

    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    return make(
        refuse, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call of ``gitstafette.v1.Gitstafette``; other services pass untouched."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not self.auth.required or not details.method.startswith(GUARDED_PREFIX):
            return handler
        try:
            self.auth.authenticate(details.invocation_metadata)
        except AuthError as exc:
            logger.info("refused %s: %s", details.method.removeprefix(GUARDED_PREFIX), exc.message)
            return _refusal(handler, exc)
        return handler
