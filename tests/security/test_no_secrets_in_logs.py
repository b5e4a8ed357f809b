"""Secrets (tokens, webhook secrets, the admin token) never reach a log, ``--help`` or an error message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
from typer.testing import CliRunner

from gitstafette.cli import app
from tests.client.utils import RecordingTarget, running_client, wait_until
from tests.security.utils import (
    OTHER,
    REPO,
    Calls,
    admin_get,
    make_token,
    new_secret,
    signed_request,
    write_tokens,
)
from tests.utils import running_server

runner = CliRunner()


async def test_a_whole_run_with_secrets_logs_none_of_them(tmp_path: Path, target: RecordingTarget) -> None:
    webhook, per_repository, admin, oauth = (
        new_secret("webhook"),
        new_secret("per-repo"),
        new_secret("admin"),
        new_secret("oauth"),
    )
    jenkins, stranger = make_token("jenkins", REPO), new_secret("stranger")
    tokens_file = write_tokens(tmp_path / "tokens.yaml", jenkins)
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text(f'"{OTHER}" = "{per_repository}"\n')
    admin_file = tmp_path / "admin"
    admin_file.write_text(admin)
    secrets = {
        "webhook secret": webhook,
        "per-repository secret": per_repository,
        "admin token": admin,
        "OAUTH_TOKEN": oauth,
        "client token": jenkins.value,
        "unknown token": stranger,
    }
    logs: dict[str, str] = {}
    server_env = {"GITSTAFETTE_WEBHOOK_SECRET": webhook, "OAUTH_TOKEN": oauth}
    with running_server(
        "--store",
        f"sqlite:///{tmp_path / 'events.db'}",
        "--log-level",
        "debug",
        "--tokens-file",
        str(tokens_file),
        "--webhook-secrets-file",
        str(secrets_file),
        "--admin-token-file",
        str(admin_file),
        env=server_env,
    ) as server:
        client_env = {"GITSTAFETTE_TOKEN": jenkins.value, "GITSTAFETTE_WEBHOOK_SECRET": webhook}
        with running_client(server, [REPO], target.url, "jenkins", "--log-level", "debug", env=client_env) as client:
            client.wait_connected()
            # A relay end to end.
            headers, body, _ = signed_request(webhook)
            assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body).status_code == 201
            wait_until(lambda: target.delivered(), message="the delivery")
            # A wrong signature, and one made with another repository's secret.
            headers, body, _ = signed_request(per_repository)
            assert httpx.post(f"{server.url}/v1/github/", headers=headers, content=body).status_code == 401
            # The admin API, with the wrong token and the right one.
            assert admin_get(server, f"/v1/events/{REPO}", stranger).status_code == 401
            assert admin_get(server, f"/v1/events/{REPO}", admin).status_code == 200
            # Direct calls with an unknown token, and a scoped token reading past its scope.
            async with grpc.aio.insecure_channel(server.grpc_target) as channel:
                assert await Calls(channel, stranger).stream(REPO) == grpc.StatusCode.UNAUTHENTICATED
                assert await Calls(channel, jenkins.value).fetch(OTHER) == grpc.StatusCode.PERMISSION_DENIED
                assert await Calls(channel, oauth).status(REPO) == grpc.StatusCode.OK
            # A client with a wrong token keeps trying, and says why.
            with running_client(
                server, [REPO], target.url, "wrong", "--log-level", "debug", env={"GITSTAFETTE_TOKEN": stranger}
            ) as wrong:
                wait_until(lambda: "UNAUTHENTICATED" in wrong.log(), message="the refusal in the client's log")
            logs["wrong client"] = wrong.log()
        logs["client"] = client.log()
    logs["server"] = server.log()

    assert "refused by" in logs["wrong client"] and "unknown token" in logs["wrong client"]
    assert "delivered 186853002#1" in logs["client"]
    assert "signature check failed" not in logs["server"]  # the log says "refused: … does not match the body"
    assert "does not match the body" in logs["server"]
    for where, text in logs.items():
        for what, value in secrets.items():
            assert value not in text, f"the {what} is in the {where} log"


def test_help_and_errors_show_no_secret(tmp_path: Path) -> None:
    values = {name: new_secret(name.lower()) for name in ("GITSTAFETTE_WEBHOOK_SECRET", "GITSTAFETTE_TOKEN")}
    values["GITSTAFETTE_ADMIN_TOKEN"] = new_secret("admin")
    values["OAUTH_TOKEN"] = new_secret("oauth")
    for command in (["server"], ["client"], ["events", "list"], ["events", "replay"], ["send-webhook"]):
        result = runner.invoke(app, [*command, "--help"], env=values, terminal_width=200)
        assert result.exit_code == 0, result.output
        for value in values.values():
            assert value not in result.output, command

    # A raw token pasted where its hash belongs: refused, and not repeated back.
    raw = new_secret("raw-token")
    tokens_file = tmp_path / "tokens.yaml"
    tokens_file.write_text(f"tokens:\n  - sha256: {raw}\n    client_id: ci\n    repositories: ['*']\n")
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text(f'"{REPO}": {raw}: nested\n')
    for args in (["--tokens-file", str(tokens_file)], ["--webhook-secrets-file", str(broken_yaml)]):
        result = subprocess.run(
            [sys.executable, "-m", "gitstafette", "server", "--store", "memory://", "--http-port", "0", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "GITSTAFETTE_GRPC_PORT": "0"},
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("gitstafette: "), result.stderr
        assert raw not in result.stderr + result.stdout


def test_hash_token_prints_the_hash_the_tokens_file_wants() -> None:
    token = new_secret("token")
    result = runner.invoke(app, ["hash-token"], input=token + "\n")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == make_token("x").__class__(token, "x", ()).sha256
    assert token not in result.output
    assert runner.invoke(app, ["hash-token"], input="").exit_code == 2
