"""The state API as an ASGI app for ``/graphql``: strawberry's ``GraphQL`` behind the bearer-token check.

HTTP: a request without a valid token is answered 401 before strawberry sees it (only GraphiQL's page,
when enabled, is served without one: it holds no data). Websockets speak ``graphql-transport-ws`` only;
the token comes in ``connection_init`` (``{"authorization": "Bearer …"}``): without a valid one the
socket is closed with 4401.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage

from gitstafette.model import Watchlist
from gitstafette.server.parts import ServerParts
from gitstafette.state.access import Principal, principal_for
from gitstafette.state.schema import StateContext, build_schema

__all__ = ["StateApp"]

logger = logging.getLogger(__name__)

#: the ASGI scope key the principal of an HTTP request travels in, from StateApp to get_context
_PRINCIPAL = "gitstafette.principal"
#: a websocket's principal until its connection_init carried a valid token: may see nothing
_NOBODY = Principal(frozenset(), Watchlist(), source="no token yet")


class _TransportWS(BaseGraphQLTransportWSHandler[StateContext, None]):
    """graphql-transport-ws with the token checked in ``connection_init``: none valid → close 4401."""

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        authorization = payload.get("authorization") if isinstance(payload, dict) else None
        view: _GraphQL = self.view  # type: ignore[assignment]
        principal = principal_for(view.parts.auth, authorization if isinstance(authorization, str) else None)
        if principal is None and not self.connection_init_received:
            logger.info("state API websocket refused: no valid token in connection_init")
            await self.websocket.close(code=4401, reason="Unauthorized")
            return
        if principal is not None and not self.connection_init_received:
            self.context.principal = principal
        await super().handle_connection_init(message)


class _GraphQL(GraphQL[StateContext, None]):
    graphql_transport_ws_handler_class = _TransportWS

    def __init__(self, parts: ServerParts) -> None:
        config = parts.config
        super().__init__(
            build_schema(introspection=config.state_api_introspection),
            graphql_ide="graphiql" if config.state_api_graphiql else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        )
        self.parts = parts

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> StateContext:
        principal = request.scope.get(_PRINCIPAL, _NOBODY)
        return StateContext(self.parts, principal)


class StateApp:
    """``/graphql``: the token of each HTTP request checked, then strawberry."""

    def __init__(self, parts: ServerParts) -> None:
        self.auth = parts.auth
        self.graphiql = parts.config.state_api_graphiql
        self.graphql = _GraphQL(parts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.graphql(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        principal = principal_for(self.auth, authorization)
        if principal is None:
            if self.graphiql and scope["method"] == "GET" and authorization is None:
                await self.graphql(scope, receive, send)  # the IDE's page; its queries bring the token
                return
            logger.info("state API request refused: %s", "unknown token" if authorization else "no token")
            await _unauthorized()(scope, receive, send)
            return
        await self.graphql({**scope, _PRINCIPAL: principal}, receive, send)


def _unauthorized() -> Response:
    detail: dict[str, Any] = {
        "status": 401,
        "detail": "the state API needs a token: send 'Authorization: Bearer <token>' (the admin token, or a "
        "client token of the tokens file)",
    }
    return JSONResponse(detail, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="gitstafette"'})
