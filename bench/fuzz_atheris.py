#!/usr/bin/env python3
"""Coverage-guided fuzzing of the pure webhook parsing with atheris (libFuzzer), run by hand.

The hypothesis suite (tests/github/test_fuzz_parsing.py) runs in CI; this goes on for as long as you let it,
guided by the branches it reaches in ``gitstafette.github``. Each input is split into headers (the routing
ones and the signature) and a body; ``parse_webhook`` must route it or refuse it with 400/406/415,
``webhook_payload`` must return a JSON object or refuse with 400/415, and the signature checks must answer,
whatever the bytes. Any other exception is a finding (atheris stops and writes
the input to ``crash-…``).

    .venv/bin/pip install atheris            # not a dependency of the project: only this script needs it
    .venv/bin/python bench/fuzz_atheris.py -atheris_runs=200000
    .venv/bin/python bench/fuzz_atheris.py crash-<sha1>    # run one saved input again
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from gitstafette.exceptions import WebhookRejected
    from gitstafette.github.signature import WebhookSecrets
    from gitstafette.github.webhook import parse_webhook, webhook_payload
    from gitstafette.model import Watchlist
    from gitstafette.security.secret import Secret

WATCHLISTS = (Watchlist.parse("*"), Watchlist.parse("186853002,Codertocat/Hello-World"))
SECRETS = WebhookSecrets.build(Secret("atheris-secret"), {"Codertocat/Hello-World": "atheris-by-name"})
TARGET_TYPES = ["repository", "organization", "integration", "", "Repository"]
CONTENT_TYPES = ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]
OPTIONAL_HEADERS = ("x-github-hook-installation-target-id", "x-hub-signature-256")


def one_input(data: bytes) -> None:
    fuzzed = atheris.FuzzedDataProvider(data)
    watchlist = WATCHLISTS[fuzzed.ConsumeIntInRange(0, len(WATCHLISTS) - 1)]
    # GitHub's two required headers are always there (so that inputs reach the routing), the others may be
    headers = {"x-github-delivery": "d-" + fuzzed.ConsumeUnicodeNoSurrogates(8), "x-github-event": "push"}
    headers["x-github-hook-installation-target-type"] = fuzzed.PickValueInList(TARGET_TYPES)
    headers["content-type"] = fuzzed.PickValueInList(CONTENT_TYPES)
    for name in OPTIONAL_HEADERS:
        if fuzzed.ConsumeBool():
            headers[name] = fuzzed.ConsumeUnicodeNoSurrogates(40)
    body = fuzzed.ConsumeBytes(fuzzed.remaining_bytes())
    try:
        if not isinstance(webhook_payload(body, headers["content-type"]), dict):
            raise AssertionError("a payload that is not a JSON object")
    except WebhookRejected as exc:
        if exc.status_code not in (400, 415):
            raise AssertionError(f"payload refused with {exc.status_code}: {exc.detail}") from exc
    try:
        event = parse_webhook(headers, list(headers.items()), body, watchlist, 0, {})
    except WebhookRejected as exc:
        if exc.status_code not in (400, 406, 415):
            raise AssertionError(f"refused with {exc.status_code}: {exc.detail}") from exc
        return
    if not event.repository_id or not watchlist.watches(event.repository_id, event.repository_name):
        raise AssertionError(f"routed to a repository that is not watched: {event.repository_id!r}")
    problem = SECRETS.problem(event.repository_id, body, headers.get("x-hub-signature-256"),
                              headers.get("content-type", ""))  # fmt: skip
    if problem is not None and "atheris-" in problem:
        raise AssertionError(f"a secret in the answer: {problem}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
