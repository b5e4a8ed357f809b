"""Wire names, default ports and limits, in one place. Units are in the names."""

from __future__ import annotations

__all__ = [
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_KEEP_ALIVE_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_EVENT_AGE_S",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_STREAMS_PER_CLIENT",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_RETENTION_S",
    "DEFAULT_SHUTDOWN_GRACE_S",
    "DEFAULT_SQLITE_PATH",
    "GRPC_MESSAGE_OVERHEAD_BYTES",
    "HEADER_DELIVERY",
    "HEADER_EVENT",
    "HEADER_HOOK_ID",
    "HEADER_SIGNATURE_256",
    "HEADER_TARGET_ID",
    "HEADER_TARGET_TYPE",
    "METADATA_AUTHORIZATION",
    "RELAYED_HEADER_PREFIXES",
    "RELAYED_HEADERS",
    "SERVICE_NAME",
]

SERVICE_NAME = "gitstafette"

DEFAULT_HTTP_PORT = 1323
DEFAULT_GRPC_PORT = 50051
DEFAULT_CLIENT_HEALTH_PORT = 8080

#: GitHub caps webhook payloads at 25 MB.
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
#: Room for headers and framing around the body in one gRPC message.
GRPC_MESSAGE_OVERHEAD_BYTES = 1024 * 1024

DEFAULT_SQLITE_PATH = "gitstafette.db"
#: Acknowledged events are kept this long (for replay and inspection).
DEFAULT_RETENTION_S = 24 * 3600
#: Unacknowledged events are kept at most this long.
DEFAULT_MAX_EVENT_AGE_S = 7 * 24 * 3600
#: A stream that carried nothing for this long gets a heartbeat (proxies cut idle connections).
DEFAULT_HEARTBEAT_S = 15.0
DEFAULT_SHUTDOWN_GRACE_S = 10.0
#: Open acknowledged streams one client id may hold (replicas of one client each hold one).
DEFAULT_MAX_STREAMS_PER_CLIENT = 8
#: The request line and headers, and then the body, of one HTTP request must each arrive within this.
DEFAULT_REQUEST_TIMEOUT_S = 30.0
#: Request line plus headers of one HTTP request, at most (GitHub sends about 1 KB).
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
#: An idle keep-alive HTTP connection is closed after this long (uvicorn's default).
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5.0

# GitHub's request headers (HTTP header names are case-insensitive; these are GitHub's spelling).
HEADER_EVENT = "X-GitHub-Event"
HEADER_DELIVERY = "X-GitHub-Delivery"
HEADER_HOOK_ID = "X-GitHub-Hook-ID"
HEADER_TARGET_TYPE = "X-GitHub-Hook-Installation-Target-Type"
HEADER_TARGET_ID = "X-GitHub-Hook-Installation-Target-ID"
HEADER_SIGNATURE_256 = "X-Hub-Signature-256"

#: gRPC metadata (and HTTP header) carrying ``Bearer <token>``; gRPC metadata keys are lower case.
METADATA_AUTHORIZATION = "authorization"

#: Headers stored with an event and relayed to the target, by lower-case name or prefix.
RELAYED_HEADERS = frozenset({"content-type", "user-agent"})
RELAYED_HEADER_PREFIXES = ("x-github-", "x-hub-signature")
