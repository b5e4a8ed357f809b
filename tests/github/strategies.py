"""Hypothesis strategies for webhook requests: GitHub's headers with odd values, and bodies from real payloads
to garbage (broken, deeply nested or oddly encoded JSON, forms, random bytes, sizes around a limit).

Shared by the fuzzing of the pure parsing (tests/github/test_fuzz_parsing.py) and of a real server's webhook
endpoint (tests/server/test_fuzz_webhook_endpoint.py), with ``expected_payload``: what the contract says a body
carries, written from the contract with the standard library rather than from the server's code.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes, urlencode

from hypothesis import strategies as st

from tests.utils import FIXTURES

HELLO_WORLD_ID = "186853002"  # Codertocat/Hello-World in the fixtures
OCTOCODERS_ID = "186853261"  # Octocoders/Hello-World (ping.0.json)
#: repository ids the requests name: two of the fixtures' and some nobody watches
REPOSITORY_IDS = (HELLO_WORLD_ID, OCTOCODERS_ID, "42", "537845873", "1")
REPOSITORY_NAMES = ("Codertocat/Hello-World", "Octocoders/Hello-World", "octo-org/deploy", "", "a/b/c")
FIXTURE_BODIES = tuple(path.read_bytes() for path in sorted(FIXTURES.glob("*.json")))
#: the fixtures' event names and some GitHub never sends
EVENTS = ("push", "ping", "pull_request", "create", "release", "installation", "organization", "", " ", "x" * 300)
CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/x-www-form-urlencoded",
    "APPLICATION/X-WWW-FORM-URLENCODED; charset=latin-1",
    "text/plain",
    "multipart/form-data; boundary=x",
    "",
    ";;;",
)
#: headers GitHub sends, by which a webhook is routed and checked
GITHUB_HEADERS = (
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-GitHub-Hook-ID",
    "X-GitHub-Hook-Installation-Target-Type",
    "X-GitHub-Hook-Installation-Target-ID",
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "Content-Type",
    "User-Agent",
)
#: hop-by-hop and framing headers the endpoint fuzzing sets itself (a random one would desynchronise the
#: connection rather than test the server)
FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade"})

_TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: the content types GitHub sends: a hook's "json" and "form"
ACCEPTED_MEDIA_TYPES = ("application/json", "application/x-www-form-urlencoded")
#: the server reads at most this many fields of a form (GitHub's has one)
FORM_MAX_FIELDS = 64


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def expected_payload(body: bytes, content_type: str | None) -> dict[str, Any] | int | None:
    """The contract: the JSON object a webhook body carries; None when it carries none (answered 400); 415 for a
    content type GitHub does not send (a missing or blank one counts as JSON).

    JSON is UTF-8 and an object; a form is ASCII, with exactly one ``payload`` field whose URL-decoded bytes are
    such JSON.
    """
    blank = content_type is None or not content_type.strip()
    media_type = ACCEPTED_MEDIA_TYPES[0] if blank else content_type.split(";")[0].strip().lower()
    if media_type not in ACCEPTED_MEDIA_TYPES:
        return 415
    data = body
    if media_type == ACCEPTED_MEDIA_TYPES[1]:
        if not body.isascii() or body.count(b"&") >= FORM_MAX_FIELDS:
            return None
        fields = [part.partition(b"=") for part in body.split(b"&") if part]
        payloads = [value for name, _, value in fields if unquote_to_bytes(name.replace(b"+", b" ")) == b"payload"]
        if len(payloads) != 1:
            return None
        data = unquote_to_bytes(payloads[0].replace(b"+", b" "))
    try:
        payload = json.loads(data.decode("utf-8"), parse_constant=_not_json)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return payload if isinstance(payload, dict) else None


def header_values() -> st.SearchStrategy[str]:
    """What an HTTP header value can carry: printable ASCII, latin-1 (obs-text), or empty and blank."""
    return st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80),
        st.sampled_from(["", " ", "\t", "0", "-1", "null", "00186853002", " 186853002 ", "186853002x", "１２３"]),
    )


def header_names() -> st.SearchStrategy[str]:
    """GitHub's header names in any case, and made-up ones."""
    known = st.sampled_from(GITHUB_HEADERS).flatmap(lambda name: st.sampled_from([name, name.lower(), name.upper()]))
    made_up = st.text(st.sampled_from(_TOKEN), min_size=1, max_size=24).filter(
        lambda name: name.lower() not in FRAMING_HEADERS
    )
    return st.one_of(known, made_up)


def repository_ids() -> st.SearchStrategy[object]:
    """What ``repository.id`` can be in a payload: the known ids as numbers or strings, and odd values."""
    return st.one_of(
        st.sampled_from(REPOSITORY_IDS).map(int),
        st.sampled_from(REPOSITORY_IDS),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([None, True, 1.5, "", "²", "٣", "12a", [], {}, "1e3"]),
    )


def payloads() -> st.SearchStrategy[object]:
    """A JSON document shaped like a GitHub payload, or like nothing in particular."""
    repository = st.fixed_dictionaries(
        {"id": repository_ids()},
        optional={"full_name": st.one_of(st.sampled_from(REPOSITORY_NAMES), st.text(max_size=30), st.integers())},
    )
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
    anything = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    )
    return st.one_of(
        st.fixed_dictionaries({"repository": repository}, optional={"action": st.text(max_size=10), "x": anything}),
        st.fixed_dictionaries({"repository": anything}),
        anything,
    )


def _encoded(document: object, encoding: str) -> bytes:
    """``document`` as JSON in ``encoding`` (``ascii``: with \\u escapes; latin-1: what it cannot hold as ``?``)."""
    text = json.dumps(document, ensure_ascii=encoding == "ascii")
    return text.encode("utf-8") if encoding == "ascii" else text.encode(encoding, "replace")


def _broken(body: bytes, cut: int, flip: int) -> bytes:
    """``body`` cut short, or with one byte changed."""
    if not body:
        return body
    if flip < 0:
        return body[: cut % len(body)]
    position = flip % len(body)
    return body[:position] + bytes([(body[position] + 1) % 256]) + body[position + 1 :]


def _json_bodies() -> st.SearchStrategy[bytes]:
    """Payloads as JSON in UTF-8 (what GitHub sends), and in the encodings ``json.loads`` would guess and latin-1,
    which the server refuses (JSON is UTF-8)."""
    return st.builds(_encoded, payloads(), st.sampled_from(["utf-8", "utf-8", "ascii", "utf-16", "utf-32", "latin-1"]))


def _forms() -> st.SearchStrategy[bytes]:
    """Payloads as the ``payload`` field of a form, among other fields."""
    return st.builds(
        lambda document, extra: urlencode([("payload", json.dumps(document)), *extra]).encode(),
        payloads(),
        st.lists(st.tuples(st.text(max_size=5), st.text(max_size=5)), max_size=3),
    )


def bodies() -> st.SearchStrategy[bytes]:
    """Request bodies: real payloads, JSON in UTF-8 and other encodings, forms, broken and deeply nested JSON,
    JSON that is not an object, huge numbers, random bytes."""
    json_bodies, forms = _json_bodies(), _forms()
    openers = st.sampled_from([b"[", b'{"a":', b'{"repository":'])
    nested = st.builds(lambda opener, depth: opener * depth, openers, st.integers(1, 60_000))
    huge_numbers = st.integers(1, 6000).map(lambda digits: b'{"repository": {"id": ' + b"9" * digits + b"}}")
    return st.one_of(
        st.sampled_from(FIXTURE_BODIES),
        json_bodies,
        forms,
        st.builds(_broken, st.one_of(st.sampled_from(FIXTURE_BODIES), json_bodies), st.integers(), st.integers(-1)),
        nested,
        huge_numbers,
        st.binary(max_size=512),
        st.sampled_from(
            [b"", b" ", b"null", b"{}", b"[]", b'"x"', b"7", b"\xef\xbb\xbf{}", b"\x00" * 8, b"payload=", b"hello"]
        ),
    )


@dataclass
class WebhookRequest:
    """One generated request: the headers in the order sent (names in any case, repeats allowed) and the body."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def by_name(self) -> dict[str, str]:
        """The headers by lower-case name, the first of repeated ones winning (as the server reads them)."""
        found: dict[str, str] = {}
        for name, value in self.headers:
            found.setdefault(name.lower(), value)
        return found


def fresh_delivery_ids() -> st.SearchStrategy[str]:
    """A new GUID each time (hypothesis would draw the same few ``uuids()`` again and again: all 204s)."""
    return st.builds(lambda: str(uuid.uuid4()))


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in ``n`` draws (hypothesis picks the branches of ``one_of`` about evenly)."""
    return draw(st.integers(1, n)) == n


def _optional(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    return st.one_of(strategy, st.none())


@st.composite
def webhook_requests(draw: st.DrawFn) -> WebhookRequest:
    """A request as GitHub sends one (half of them, with odd but valid-looking values), or anything at all."""
    realistic = draw(st.booleans())
    if realistic:  # GitHub-like, so that it gets past the first checks and is stored or routed
        delivery = draw(st.sampled_from(["dup-1", "dup-2", " dup-1 "]) if one_in(draw, 8) else fresh_delivery_ids())
        event = draw(st.sampled_from(EVENTS[:7]))
        target_type = draw(st.sampled_from(["repository", "repository", "organization", "integration", "Repository"]))
        target_id = draw(_optional(st.sampled_from(REPOSITORY_IDS)))
        content_type = draw(_optional(st.sampled_from(CONTENT_TYPES[:5])))
        # A body of its content type, as GitHub sends it (now and then the other kind, which is refused)
        form = (content_type or "").lower().startswith(ACCEPTED_MEDIA_TYPES[1]) != one_in(draw, 8)
        body = draw(_forms() if form else st.one_of(st.sampled_from(FIXTURE_BODIES), _json_bodies()))
    else:
        deliveries = st.one_of(fresh_delivery_ids(), st.sampled_from(["dup-1", "dup-2"]), header_values())
        delivery = draw(_optional(deliveries))
        event = draw(_optional(st.one_of(st.sampled_from(EVENTS), header_values())))
        types = st.sampled_from(["repository", "organization", "integration", "Repository"])
        target_type = draw(_optional(st.one_of(types, header_values())))
        target_id = draw(_optional(st.one_of(st.sampled_from(REPOSITORY_IDS), header_values())))
        content_type = draw(_optional(st.one_of(st.sampled_from(CONTENT_TYPES), header_values())))
        body = draw(bodies())
    headers = [
        (name, value)
        for name, value in (
            ("X-GitHub-Delivery", delivery),
            ("X-GitHub-Event", event),
            ("X-GitHub-Hook-Installation-Target-Type", target_type),
            ("X-GitHub-Hook-Installation-Target-ID", target_id),
            ("Content-Type", content_type),
        )
        if value is not None
    ]
    # More headers: in a GitHub-like request other ones (GitHub's own among them once it is a repeat that
    # comes after the first, as the server reads the first of repeated ones)
    extra = draw(st.lists(st.tuples(header_names(), header_values()), max_size=4))
    if realistic:
        return WebhookRequest(headers + extra, body)
    return WebhookRequest(draw(st.permutations(headers + extra)), body)
