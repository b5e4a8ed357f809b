"""What every command shares: running on the chosen event loop, failing with one line, the common options."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, Protocol, TypeVar

import typer

from gitstafette._runtime import event_loop_factory
from gitstafette.exceptions import ConfigError, StoreError
from gitstafette.telemetry.logs import configure_logging as _configure

__all__ = [
    "EVENT_LOOP_OPTION",
    "LOG_FORMAT_OPTION",
    "LOG_LEVEL_HELP",
    "LOG_LEVEL_OPTION",
    "OTEL_OPTION",
    "READY_FILE_HOW",
    "SENTRY_OPTION",
    "configure_logging",
    "env",
    "fail",
    "quiet_grpc_core",
    "reason",
    "run",
    "serve",
]

LOG_LEVEL_HELP = "debug, info, warning or error."
LOG_FORMAT_HELP = (
    "json (one JSON object a line: timestamp, level, logger, event, and delivery_id / trace_id on lines about "
    "a webhook), console (readable, for a terminal) or auto: console on a terminal, json otherwise."
)
LOG_FORMAT_OPTION = typer.Option(envvar="GITSTAFETTE_LOG_FORMAT", help=LOG_FORMAT_HELP)
EVENT_LOOP_HELP = (
    "auto (uvloop when it is installed, as it is with gitstafette; else asyncio's own), uvloop or asyncio, "
    "the fallback should uvloop misbehave."
)
EVENT_LOOP_OPTION = typer.Option(envvar="GITSTAFETTE_EVENT_LOOP", help=EVENT_LOOP_HELP)


def env(name: str, help: str | None = None, **option: Any) -> Any:
    """A typer option that the environment variable ``GITSTAFETTE_<name>`` may set instead."""
    return typer.Option(envvar=f"GITSTAFETTE_{name}", help=help, **option)


LOG_LEVEL_OPTION = env("LOG_LEVEL", LOG_LEVEL_HELP)
OTEL_HELP = (
    "Export OpenTelemetry traces (one per webhook, server and client spans linked) and the metrics over OTLP. "
    "Where to: the standard OTEL_EXPORTER_OTLP_* variables, or the original's OTEL_HOSTNAME, OTEL_PORT (4317), "
    "OTEL_PROTOCOL (grpc or http); OTEL_SERVICE_NAME; OTEL_TRACE_SAMPLING_RATE (0 to 1) or OTEL_TRACES_SAMPLER. "
    "The standard variables win when both are set."
)
SENTRY_DSN_HELP = (
    "Report unexpected errors, signature failures and dead letters to this Sentry project (never a payload, "
    "header or secret). Prefer the environment variable SENTRY_DSN."
)
# The end of both ready-file helps: why a file, and how it is written.
READY_FILE_HOW = (
    "Written whole (a temporary file renamed into place), so programs can wait for it instead of reading "
    "the log; removed on shutdown."
)
SENTRY_OPTION = typer.Option(envvar=["GITSTAFETTE_SENTRY_DSN", "SENTRY_DSN"], help=SENTRY_DSN_HELP, show_default=False)
OTEL_OPTION = typer.Option("--otel/--no-otel", envvar=["GITSTAFETTE_OTEL_ENABLED", "OTEL_ENABLED"], help=OTEL_HELP)


def fail(error: ConfigError) -> typer.Exit:
    typer.echo(f"gitstafette: {error}", err=True)
    return typer.Exit(2)


def run(main: Coroutine[Any, Any, None], event_loop: str, left_behind: Callable[[], list[str]] = list) -> None:
    """Run ``main`` on the event loop ``--event-loop`` names (asyncio.Runner's documented loop_factory).

    When ``left_behind()`` names shutdown steps that ran out of time, the process exits at once (code 1,
    see :func:`exit_now`) instead of closing the loop: closing it waits, without a bound, for every task
    left (one that ignores its cancellation) and for the executor's threads (one stuck in a driver).
    """
    try:
        factory = event_loop_factory(event_loop)
    except ConfigError as exc:
        main.close()
        raise fail(exc) from exc
    runner = asyncio.Runner(loop_factory=factory)
    try:
        runner.run(main)
    except BaseException as exc:
        if left_behind():
            exit_now(exc)
        raise
    else:
        if left_behind():
            exit_now(None)
    finally:
        runner.close()


def exit_now(error: BaseException | None) -> NoReturn:
    """End the process now, with exit code 1: the log has said which shutdown step ran out of time and what
    it left undone. The logs and the standard streams are flushed first; nothing else is waited for."""
    if isinstance(error, OSError | StoreError | ConfigError):
        typer.echo(f"gitstafette: {reason(error)}", err=True)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(1)


def reason(error: Exception) -> str:
    """The message of ``error`` without the ``[Errno 98]`` that str() of an OSError starts with."""
    if isinstance(error, OSError) and error.errno is not None and error.strerror:
        return error.strerror
    return str(error)


def quiet_grpc_core(verbosity: str) -> None:
    """Set gRPC's C-core log level (its documented GRPC_VERBOSITY: DEBUG, INFO, ERROR or NONE) unless the
    environment sets it already. It is read once, when grpc is imported, so this runs in the command before
    the first import of grpc; the library modules leave the environment alone."""
    os.environ.setdefault("GRPC_VERBOSITY", verbosity)


def configure_logging(level: str, log_format: str = "auto") -> None:
    try:
        _configure(level, log_format)
    except ConfigError as exc:
        raise fail(exc) from exc


class _Process(Protocol):
    def serve(self) -> Coroutine[Any, Any, None]: ...


P = TypeVar("P", bound=_Process)


def serve(what: str, make: Callable[[], P], event_loop: str, left_behind: Callable[[P], list[str]] | None = None) -> P:
    """Make the process and run it until it stops; the process, to ask how it ended.

    Files that cannot be used (certificates, keys) exit with code 2 and their one-line reason, a port that
    cannot be bound or a store that cannot be opened with code 1 and "cannot start the <what>".
    """
    try:
        process = make()
        run(process.serve(), event_loop, (lambda: left_behind(process)) if left_behind else list)
    except ConfigError as exc:
        raise fail(exc) from exc
    except (OSError, StoreError) as exc:
        typer.echo(f"gitstafette: cannot start the {what}: {reason(exc)}", err=True)
        raise typer.Exit(1) from exc
    return process
