"""Logging setup, in one place: stdlib module loggers everywhere, rendered by structlog.

Every module logs through its own stdlib logger with %-style arguments; one ``dictConfig`` sends the
records of gitstafette and of the libraries it runs on through structlog's ``ProcessorFormatter``
(structlog's documented stdlib integration), which renders them:

- ``json`` (the default when stderr is not a terminal: containers, systemd): one JSON object a line with
  ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``event`` (the message) and, on a line about one
  webhook, its ``delivery_id`` and, while tracing, its ``trace_id``; an exception as ``exception``;
- ``console`` (the default on a terminal): the same, aligned and coloured for people.

A line is "about one webhook" while :func:`bind_event` holds one in the running task (the server's
request, the client's delivery): it costs one ``ContextVar.set`` per event.
"""

from __future__ import annotations

import json
import logging.config
import sys
from contextvars import ContextVar
from typing import Any, Literal, cast, get_args

import structlog
from structlog.typing import EventDict, WrappedLogger

from gitstafette.exceptions import ConfigError

__all__ = ["LOG_LEVELS", "LogFormat", "bind_event", "configure_logging", "unbind_event"]

LogFormat = Literal["auto", "json", "console"]
LOG_LEVELS = ("debug", "info", "warning", "error")

#: (delivery id, trace id or "") of the webhook the running task works on
_EVENT: ContextVar[tuple[str, str] | None] = ContextVar("gitstafette_event", default=None)


def bind_event(delivery_id: str, trace_id: str = "") -> None:
    """Tag the running task's log lines from now on with this webhook's delivery id (and trace id)."""
    _EVENT.set((delivery_id, trace_id))


def unbind_event() -> None:
    """The running task's next log lines are about no webhook in particular."""
    _EVENT.set(None)


def _add_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    current = _EVENT.get()
    if current is not None:
        delivery_id, trace_id = current
        event_dict.setdefault("delivery_id", delivery_id)
        if trace_id:
            event_dict.setdefault("trace_id", trace_id)
    return event_dict


def _pre_chain() -> list[Any]:
    """What every record goes through before it is rendered (records of stdlib loggers included)."""
    return [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_event,
    ]


def _renderers(log_format: LogFormat) -> list[Any]:
    """The last processors: what renders a record, exception included."""
    if log_format == "console" or (log_format == "auto" and sys.stderr.isatty()):
        return [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]  # it renders exceptions itself
    return [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(serializer=json.dumps, ensure_ascii=False),
    ]


def logging_config(level: str = "INFO", log_format: LogFormat = "auto") -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderers(log_format)],
                "foreign_pre_chain": _pre_chain(),
            },
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "structlog", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "gitstafette": {"level": level.upper(), "handlers": ["stderr"], "propagate": False},
            "uvicorn.error": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
            "uvicorn.access": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
            "grpc": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
        },
        "root": {"level": "WARNING", "handlers": ["stderr"]},
    }


def configure_logging(level: str = "INFO", log_format: str = "auto") -> None:
    """Route the stdlib loggers through structlog's formatter (and structlog's own loggers, should a
    module use one, the same way).

    :raises ConfigError: an unknown level or format.
    """
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log-level: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    if log_format not in get_args(LogFormat):
        raise ConfigError(f"log-format: {log_format!r} is not one of {', '.join(get_args(LogFormat))}")
    structlog.configure(
        processors=[*_pre_chain(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    logging.config.dictConfig(logging_config(level, cast(LogFormat, log_format)))
