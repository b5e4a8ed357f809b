"""``gitstafette send-webhook`` and the configuration of ``gitstafette client``."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gitstafette.cli import app
from gitstafette.config import ClientConfig
from gitstafette.exceptions import ConfigError
from tests.client.utils import PUSH, RecordingTarget
from tests.utils import FIXTURES

runner = CliRunner()


def test_send_webhook_posts_the_file_with_githubs_headers_and_signature() -> None:
    with RecordingTarget() as target:
        result = runner.invoke(app, ["send-webhook", str(PUSH), "--url", target.url, "--secret", "It's a Secret"])
    assert result.exit_code == 0, result.output
    (request,) = target.posts()
    body = PUSH.read_bytes()
    assert request.body == body
    assert request.header("X-GitHub-Event") == "push"
    assert str(uuid.UUID(request.delivery_id)) == request.delivery_id
    assert request.header("X-GitHub-Hook-Installation-Target-Type") == "repository"
    assert request.header("X-GitHub-Hook-Installation-Target-ID") == str(json.loads(body)["repository"]["id"])
    assert request.header("Content-Type") == "application/json"
    assert (request.header("User-Agent") or "").startswith("GitHub-Hookshot/")
    expected = "sha256=" + hmac.new(b"It's a Secret", body, hashlib.sha256).hexdigest()
    assert request.header("X-Hub-Signature-256") == expected
    assert result.output.startswith("200 OK")


def test_send_webhook_event_and_repository_options_and_a_refusal() -> None:
    with RecordingTarget() as target:
        target.answer = lambda request: 406
        path = FIXTURES / "pull_request.opened.0.json"
        result = runner.invoke(app, ["send-webhook", str(path), "--url", target.url, "--repository-id", "42"])
        assert result.exit_code == 1
        assert result.output.startswith("406")
        runner.invoke(app, ["send-webhook", str(path), "--url", target.url, "--event", "pull_request_review"])
    first, second = target.posts()
    assert first.header("X-GitHub-Event") == "pull_request"
    assert first.header("X-GitHub-Hook-Installation-Target-ID") == "42"
    assert first.header("X-Hub-Signature-256") is None
    assert second.header("X-GitHub-Event") == "pull_request_review"
    assert first.delivery_id != second.delivery_id


@pytest.mark.parametrize(
    ("content", "detail"),
    [(b"hello", "is not valid JSON"), (b"[1, 2]", "is a JSON array"), (b'{"ref": "x"', "truncated")],
)
def test_send_webhook_refuses_a_file_that_is_not_a_json_object_before_sending(
    tmp_path: Path, content: bytes, detail: str
) -> None:
    path = tmp_path / "push.json"
    path.write_bytes(content)
    with RecordingTarget() as target:
        result = runner.invoke(app, ["send-webhook", str(path), "--url", target.url])
        assert target.posts() == []
    assert result.exit_code == 2, result.output
    words = " ".join(result.output.replace("│", " ").split())  # as read, across the error box's lines
    assert "is not a webhook payload" in words
    assert detail in words
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_send_webhook_to_nothing_listening_fails_cleanly() -> None:
    with RecordingTarget() as target:
        url = target.url
    result = runner.invoke(app, ["send-webhook", str(PUSH), "--url", url])
    assert result.exit_code == 1
    assert "cannot post" in result.output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--repositories", "12,no/such/repo"], {}, "repositories: 'no/such/repo'"),
        (["--server", "localhost"], {}, "server: 'localhost' is not HOST:PORT"),
        (["--target", "ftp://example.com/x"], {}, "target:"),
        (["--target", "ftp://user:hunter2@example.com/hook"], {}, "ftp://***@example.com/hook"),
        (["--max-delivery-age", "soon"], {}, "max-delivery-age"),
        (["--health-port", "70000"], {}, "health-port"),
        ([], {"GITSTAFETTE_SERVER": "a:1,b"}, "server: 'b'"),
        # Each would be accepted at start and then fail every delivery until it is dead-lettered.
        (["--target", "http://127.0.0.1:99999/x"], {}, "target: 'http://127.0.0.1:99999/x': port '99999' is not a TCP"),
        (["--target", "http://127.0.0.1:0/x"], {}, "port '0' is not a TCP port"),
        (["--target", "grpc://nohostport"], {}, "target: 'grpc://nohostport' names no port"),
        (["--target", "http://999.1.1.1/x"], {}, "'999.1.1.1' is neither an IP address nor a host name"),
        (["--target", "https://jenkins..example.com/x"], {}, "'jenkins..example.com' is neither"),
        (["--target-health-url", "http://127.0.0.1:70000/health"], {}, "target-health-url: 'http://127.0.0.1:70000"),
        (["--target-health-url", "http://bad host/health"], {}, "target-health-url:"),
    ],
)
def test_client_refuses_a_bad_configuration_and_names_it(args: list[str], env: dict[str, str], message: str) -> None:
    base = {"--repositories": "537845873", "--target": "http://127.0.0.1:9/hook"}
    for name, value in zip(args[::2], args[1::2], strict=True):
        base[name] = value
    argv = ["client", *[item for pair in base.items() for item in pair]]
    result = runner.invoke(app, argv, env=env)
    assert result.exit_code == 2
    assert message in result.output
    assert "hunter2" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:8080/github-webhook/",
        "https://jenkins.example.com/x",
        "http://[::1]:80/x",
        "grpc://relay:50051",
    ],
)
def test_client_accepts_targets_of_every_form(target: str) -> None:
    config = ClientConfig(repositories=("1",), target=target, target_health_url=target.replace("grpc", "http"))
    assert config.target == target


def test_client_health_port_defaults_to_1324_beside_the_servers_1323_not_jenkins_8080() -> None:
    assert ClientConfig(repositories=("1",), target="http://127.0.0.1:8080/x").health_port == 1324


def test_client_config_splits_repeated_and_comma_separated_values() -> None:
    assert ClientConfig.split(["a:1,b:2", "c:3", "a:1"]) == ("a:1", "b:2", "c:3")
    assert ClientConfig.split(" 1, 2 ,,3 ") == ("1", "2", "3")
    config = ClientConfig(repositories=("1",), target="https://u:p@example.com/x", servers=("[::1]:50051",))
    assert config.target_kind == "http"
    assert "u:p" not in repr(config)
    assert ClientConfig(repositories=("1",), target="grpc://relay:50051").target_kind == "grpc"
    with pytest.raises(ConfigError, match="at least one"):
        ClientConfig(repositories=(), target="http://x/")


def test_client_that_cannot_bind_its_health_port_exits_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_VERBOSITY", "ERROR")  # the command sets it if unset: keep it from leaking
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(
            app,
            [
                "client",
                "--insecure",
                "--repositories",
                "1",
                "--target",
                "http://127.0.0.1:9/",
                "--health-host",
                "127.0.0.1",
                "--health-port",
                str(port),
            ],
        )
    assert result.exit_code == 1
    assert "cannot start the client" in result.output
