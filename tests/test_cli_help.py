"""``--help`` of every command reads whole at 80 columns: no "…" cutting an environment variable's name or
a default, every GITSTAFETTE_* variable of an option named whole, flags shown as flags, defaults shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import click
import pytest
import typer.main

from gitstafette.cli import app


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


COMMANDS = _commands(typer.main.get_group(app))


def _help(path: tuple[str, ...]) -> str:
    """``gitstafette … --help`` as a terminal of 80 columns shows it (a real process: rich and click read
    COLUMNS from the environment)."""
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm"}
    result = subprocess.run(
        [sys.executable, "-m", "gitstafette", *path, "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) or "gitstafette" for p, _ in COMMANDS])
def test_help_at_80_columns_names_every_variable_whole_and_cuts_nothing(
    path: tuple[str, ...], command: click.Command
) -> None:
    text = _help(path)
    assert "…" not in text
    # click's own cut, of a command's help in a list of commands ("[ARGS]..." of the usage line is no cut)
    cut = [line for line in text.splitlines() if line.endswith("...") and not line.startswith("Usage:")]
    assert not cut, text
    assert max(len(line) for line in text.splitlines()) <= 80
    words = set(re.findall(r"[\w+:/.\[\]@?&=-]+", text))
    for option in command.params:
        if not isinstance(option, click.Option) or option.hidden:
            continue
        envvars = [option.envvar] if isinstance(option.envvar, str) else list(option.envvar or [])
        for name in envvars:
            assert name in words, f"{' '.join(path)} {option.opts[0]}: {name} is not shown whole:\n{text}"
        if option.is_flag and not option.secondary_opts:
            # A flag takes no value: shown bare, not as "--insecure <bool>".
            assert re.search(rf"^\s+{re.escape(option.opts[0])}\s{{2,}}\S", text, re.M), text
        # Every URL in an option's help stays on one line (click would wrap a longer word mid-way).
        for url in re.findall(r"\S+://\S*", option.help or ""):
            assert url.rstrip(".,;)") in text, f"{url} is cut:\n{text}"


def test_the_client_shows_its_defaults_in_brackets_not_in_prose() -> None:
    text = " ".join(_help(("client",)).split())
    assert "--server HOST:PORT" in text
    assert "[env var: GITSTAFETTE_SERVER; default: (127.0.0.1:50051)]" in text
    assert "default: (the host name)]" in text
    assert "[env var: GITSTAFETTE_HEALTH_PORT; default: 1324]" in text
    assert "<bool>" not in text


def test_the_server_shows_every_store_scheme_and_its_default() -> None:
    text = _help(("server",))
    for scheme in ("memory", "sqlite", "redis", "rediss", "redis+sentinel", "rediss+sentinel"):
        assert f"{scheme}://" in text
    assert "default: sqlite:///gitstafette.db]" in " ".join(text.split())
