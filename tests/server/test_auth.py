"""The tokens file and the checks of ``server/auth.py``, without a server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gitstafette.config import ServerConfig
from gitstafette.exceptions import ConfigError
from gitstafette.security.secret import Secret
from gitstafette.server.auth import OPEN, Authenticator, AuthError, hash_token, load_tokens

TOKEN = "s3cret-token-of-jenkins"
SHA = hash_token(TOKEN)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_and_toml_tokens_files_say_the_same(tmp_path: Path) -> None:
    yaml_file = write(
        tmp_path,
        "tokens.yml",
        f"tokens:\n  - sha256: sha256:{SHA.upper()}\n    client_id: jenkins\n"
        "    repositories: [186853002, Octo-Org/Deploy]\n",
    )
    toml_file = write(
        tmp_path,
        "tokens.toml",
        f'[[tokens]]\nsha256 = "{SHA}"\nclient_id = "jenkins"\nrepositories = ["186853002", "octo-org/deploy"]\n',
    )
    from_yaml, from_toml = load_tokens(yaml_file), load_tokens(toml_file)
    assert from_yaml.keys() == from_toml.keys() == {SHA}
    grant = from_yaml[SHA]
    assert (grant.client_id, grant.repositories) == ("jenkins", from_toml[SHA].repositories)
    assert grant.allows("186853002") and grant.allows("1", "octo-org/DEPLOY") and not grant.allows("2")
    assert grant.allows_spec("Octo-Org/deploy") and not grant.allows_spec("octo-org/other")
    assert grant.client_id_for("claimed") == "jenkins" and OPEN.client_id_for("claimed") == "claimed"
    assert load_tokens(write(tmp_path, "empty.yaml", "")) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokens: {}", "'tokens' must be a list"),
        ("tokens: [x]", "entry 1: expected sha256, client_id and repositories"),
        (f"tokens: [{{sha256: {TOKEN}, client_id: a, repositories: ['*']}}]", "entry 1: sha256 is not the 64 hex"),
        (f"tokens: [{{sha256: {SHA}, repositories: ['*']}}]", "entry 1: client_id is required"),
        (f"tokens: [{{sha256: {SHA}, client_id: a}}]", "entry 1: repositories must list"),
        (f"tokens: [{{sha256: {SHA}, client_id: a, repositories: ['a/b/c']}}]", "entry 1: repositories: 'a/b/c'"),
        (f"tokens: [{{sha256: {SHA}, client_id: a, repositories: ['*'], admin: true}}]", r"unknown keys \['admin'\]"),
        (
            f"tokens: [{{sha256: {SHA}, client_id: a, repositories: ['*']}}, "
            f"{{sha256: {SHA}, client_id: b, repositories: ['*']}}]",
            "entry 2: the same token as the entry of client 'a'",
        ),
        ("- a list", "expected a mapping at the top level"),
    ],
)
def test_a_bad_tokens_file_is_refused_with_the_entry_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_tokens(write(tmp_path, "tokens.yaml", text))
    assert TOKEN not in str(info.value)


def test_only_yaml_and_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="name it .yaml, .yml or .toml"):
        load_tokens(write(tmp_path, "tokens.json", "{}"))
    with pytest.raises(ConfigError, match="cannot read it"):
        load_tokens(str(tmp_path / "missing.yaml"))


def test_authenticate(tmp_path: Path) -> None:
    tokens_file = write(tmp_path, "t.yaml", f"tokens: [{{sha256: {SHA}, client_id: jenkins, repositories: ['1']}}]")
    auth = Authenticator(ServerConfig(tokens_file=tokens_file, oauth_token=Secret("legacy")))
    assert auth.required and auth.token_count == 2
    assert auth.authenticate([("authorization", f"Bearer {TOKEN}")]).client_id == "jenkins"
    assert auth.authenticate([("Authorization", f"bearer  {TOKEN} ")]).client_id == "jenkins"
    legacy = auth.authenticate([("authorization", "Bearer legacy")])
    assert (legacy.client_id, legacy.allows("999")) == ("", True)
    for metadata, message in [
        ([], "no token"),
        ([("authorization", TOKEN)], "not 'Bearer <token>'"),
        ([("authorization", "Bearer nope")], "unknown token"),
    ]:
        with pytest.raises(AuthError, match=message) as info:
            auth.authenticate(metadata)
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED

    assert Authenticator(ServerConfig()).authenticate([]) is OPEN


def test_admin_token(tmp_path: Path) -> None:
    assert Authenticator(ServerConfig()).admin_allows(None)  # no token anywhere: the read API is open
    auth = Authenticator(ServerConfig(admin_token=Secret("root")))
    assert auth.admin_allows("Bearer root")
    assert not auth.admin_allows("Bearer roo") and not auth.admin_allows("root") and not auth.admin_allows(None)
    closed = Authenticator(ServerConfig(oauth_token=Secret("x")))
    assert closed.admin_required and not closed.admin_configured and not closed.admin_allows("Bearer x")
    with pytest.raises(ConfigError, match="the file is empty"):
        Authenticator(ServerConfig(admin_token_file=write(tmp_path, "admin", "\n")))
