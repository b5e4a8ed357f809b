"""X-Hub-Signature-256 and which secret applies to which repository: pure functions, no I/O."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from gitstafette.exceptions import ConfigError
from gitstafette.github.signature import WebhookSecrets, signature_256, signature_problem
from gitstafette.security.secret import Secret
from tests.utils import FIXTURES

BODY = (FIXTURES / "push.0.json").read_bytes()
REPO = "186853002"  # Codertocat/Hello-World, in push.0.json


def test_signature_is_githubs_hmac_sha256_of_the_raw_body() -> None:
    expected = "sha256=" + hmac.new(b"It's a Secret to Everybody", BODY, hashlib.sha256).hexdigest()
    assert signature_256("It's a Secret to Everybody", BODY) == expected
    assert signature_256(Secret("It's a Secret to Everybody"), BODY) == expected


def test_signature_problem_accepts_the_right_one_only() -> None:
    secret = Secret("s3cret")
    good = signature_256(secret, BODY)
    assert signature_problem(secret, BODY, good) is None
    assert signature_problem(secret, BODY, good.upper().replace("SHA256=", "sha256=")) is None
    assert signature_problem(secret, BODY, None) == "missing X-Hub-Signature-256 header"
    assert signature_problem(secret, BODY, "  ") == "missing X-Hub-Signature-256 header"
    assert signature_problem(secret, BODY, good[7:]) == "X-Hub-Signature-256 is not sha256=<hex>"
    assert signature_problem(secret, BODY + b" ", good) == "X-Hub-Signature-256 does not match the body"
    assert signature_problem(Secret("other"), BODY, good) == "X-Hub-Signature-256 does not match the body"
    assert signature_problem(secret, BODY, "sha256=é" + good[8:]) == "X-Hub-Signature-256 does not match the body"


def test_secret_masks_itself_everywhere() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in f"{secret} {secret!r} {secret!s} {[secret]} {dict(s=secret)}"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2") and secret != Secret("hunter3")
    assert Secret.optional("  ") is None and Secret.optional(None) is None
    assert Secret.optional(" x\n") == Secret("x")


def test_repository_secrets_by_id_by_name_and_default() -> None:
    secrets = WebhookSecrets.build(
        Secret("default"), {REPO: "by-id", "Octocoders/Hello-World": "by-name", 42: "numeric key"}
    )
    assert len(secrets) == 4 and secrets.configured
    assert "by-id" not in repr(secrets) and "default" not in repr(secrets).replace("default=set", "")

    assert secrets.problem(REPO, BODY, signature_256("by-id", BODY)) is None
    assert secrets.problem(REPO, BODY, signature_256("default", BODY)) is not None
    assert secrets.problem("42", BODY, signature_256("numeric key", BODY)) is None

    ping = (FIXTURES / "ping.0.json").read_bytes()  # Octocoders/Hello-World, id 186853261
    assert secrets.problem("186853261", ping, signature_256("by-name", ping)) is None
    assert secrets.problem("186853261", ping, signature_256("default", ping)) is not None


def test_an_event_cannot_borrow_another_repositorys_secret_by_naming_it() -> None:
    secrets = WebhookSecrets.build(None, {"Codertocat/Hello-World": "theirs"})
    # The payload names Codertocat/Hello-World, but the hook was routed to another id.
    problem = secrets.problem("999", BODY, signature_256("theirs", BODY))
    assert problem is not None and "does not name repository 999" in problem
    # A payload that names no repository at all cannot tell whether a secret applies: refused.
    assert secrets.problem(REPO, b"not json", None) is not None
    # Another repository without a secret of its own, and no default: nothing to check.
    other = json.dumps({"repository": {"id": 7, "full_name": "a/b"}}).encode()
    assert secrets.problem("7", other, None) is None


def test_no_secrets_checks_nothing() -> None:
    assert not WebhookSecrets().configured
    assert WebhookSecrets().problem(REPO, BODY, None) is None


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"not a repo": "x"}, "'not a repo' is neither"),
        ({REPO: ""}, f"the secret of '{REPO}' must be a non-empty string"),
        ({REPO: 12345}, f"the secret of '{REPO}' must be a non-empty string"),
    ],
)
def test_bad_secrets_are_refused_without_showing_a_value(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        WebhookSecrets.build(None, mapping, "webhook-secrets-file x.yaml")
    assert "12345" not in str(info.value)
