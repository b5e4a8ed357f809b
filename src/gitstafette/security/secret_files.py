"""Reading the files that hold secrets: webhook secrets and client tokens (YAML or TOML), an admin token.

Every error names the file and, where it helps, a key or a line, and never quotes a value: a value in
these files may be a secret, and error messages end up in logs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from gitstafette.exceptions import ConfigError
from gitstafette.github.signature import WebhookSecrets
from gitstafette.security.secret import Secret

__all__ = ["load_webhook_secrets", "read_mapping_file", "read_secret_file"]

_YAML_SUFFIXES = (".yaml", ".yml")
_TOML_SUFFIXES = (".toml",)


def _read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text") from None


def _parse_yaml(text: str, path: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # The exception's own text quotes the offending line, which may hold a secret: line and kind only.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path}: not valid YAML{where} ({exc.problem or 'syntax error'})") from None
    except yaml.YAMLError:
        raise ConfigError(f"{what} {path}: not valid YAML") from None


def _parse_toml(text: str, path: str, what: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages give a position ("Invalid value (at line 3, column 9)"), not the text.
        raise ConfigError(f"{what} {path}: not valid TOML ({exc})") from None


def read_mapping_file(path: str, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML (``.yaml``, ``.yml``) or TOML (``.toml``) file.

    :param what: how errors name the file, e.g. ``"webhook-secrets-file"``.
    """
    text = _read_text(path, what)
    suffix = Path(path).suffix.lower()
    if suffix in _TOML_SUFFIXES:
        data = _parse_toml(text, path, what)
    elif suffix in _YAML_SUFFIXES:
        data = _parse_yaml(text, path, what)
    else:
        raise ConfigError(f"{what} {path}: name it .yaml, .yml or .toml so its format is known")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level")
    return data


def read_secret_file(path: str, what: str) -> Secret:
    """A token kept alone in a file (a mounted Kubernetes secret, say); surrounding whitespace is dropped."""
    secret = Secret.optional(_read_text(path, what))
    if secret is None:
        raise ConfigError(f"{what} {path}: the file is empty")
    return secret


def load_webhook_secrets(default: Secret | None, path: str = "") -> WebhookSecrets:
    """The default secret and, from ``path``, one secret per repository::

    # webhook-secrets.yaml                  # or webhook-secrets.toml
    "186853002": "secret of that repository"  "186853002" = "secret of that repository"
    octo-org/deploy: "another secret"         "octo-org/deploy" = "another secret"
    """
    mapping = read_mapping_file(path, "webhook-secrets-file") if path else {}
    return WebhookSecrets.build(default, mapping, f"webhook-secrets-file {path}")
