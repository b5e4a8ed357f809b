"""The GraphQL state API (``--state-api``): what the server holds and does, at ``/graphql`` on its HTTP port."""

from __future__ import annotations

from gitstafette.state.app import StateApp

__all__ = ["StateApp"]
