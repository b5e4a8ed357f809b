"""Wire names, default ports and limits, in one place. Units are in the names."""

from __future__ import annotations

__all__ = [
    "DEFAULT_CLIENT_HEALTH_PORT",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HEARTBEAT_S",
    "CLIENT_SERVICE_NAME",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_KEEP_ALIVE_TIMEOUT_S",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_EVENT_AGE_S",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_STREAMS_PER_CLIENT",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_RETENTION_S",
    "DEFAULT_SHUTDOWN_GRACE_S",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_REDIS_LEASE_TTL_MS",
    "DEFAULT_REDIS_PREFIX",
    "DEFAULT_SENTINEL_PORT",
    "MIN_REDIS_LEASE_TTL_MS",
    "DEFAULT_SQLITE_PATH",
    "GRPC_MESSAGE_OVERHEAD_BYTES",
    "GRPC_MAX_PENDING_STREAMS",
    "GRPC_MAX_PENDING_STREAMS_HARD_LIMIT",
    "GRPC_MAX_UNREQUESTED_S",
    "HEADER_DELIVERY",
    "HEADER_EVENT",
    "HEADER_HOOK_ID",
    "HEADER_SIGNATURE_256",
    "HEADER_TARGET_ID",
    "HEADER_TARGET_TYPE",
    "METADATA_AUTHORIZATION",
    "REDIS_APPEND_BATCH",
    "REDIS_APPEND_BATCH_BYTES",
    "REDIS_AUDIT_KEY",
    "SERVER_SERVICE_NAME",
    "REDIS_CONNECT_TIMEOUT_S",
    "REDIS_CURSORS_KEY",
    "REDIS_DEAD_LETTERS_BY_FAILED_AT_NS_KEY",
    "REDIS_DEAD_LETTERS_KEY",
    "REDIS_DELIVERIES_KEY",
    "REDIS_EVENTS_KEY",
    "REDIS_INGEST_TIMEOUT_S",
    "REDIS_LEASE_KEY",
    "REDIS_LEASE_RELEASED_KEY",
    "REDIS_LEASE_RELEASED_MAXLEN",
    "REDIS_LEASE_RENEW_FRACTION",
    "REDIS_LEASE_TOKENS_KEY",
    "REDIS_NOTICES_BLOCK_MS",
    "REDIS_NOTICES_KEY",
    "REDIS_NOTICES_MAXLEN",
    "REDIS_PRUNE_BATCH",
    "REDIS_RECEIVED_AT_NS_KEY",
    "REDIS_RECONNECT_MAX_S",
    "REDIS_REPLAYS_KEY",
    "REDIS_REPLAYS_REQUESTED_KEY",
    "REDIS_REPOSITORIES_KEY",
    "REDIS_REPOSITORY_KEY",
    "REDIS_SOCKET_TIMEOUT_S",
    "RELAYED_HEADER_PREFIXES",
    "RELAYED_HEADERS",
    "SERVICE_NAME",
]

SERVICE_NAME = "gitstafette"

DEFAULT_HTTP_PORT = 1323
DEFAULT_GRPC_PORT = 50051
#: The client's /health, /ready and /metrics: beside the server's 1323, and not 8080, the port of Jenkins
#: and of many other targets a client may run next to.
DEFAULT_CLIENT_HEALTH_PORT = 1324

#: OpenTelemetry's service.name of each side, unless OTEL_SERVICE_NAME says
SERVER_SERVICE_NAME = "gitstafette-server"
CLIENT_SERVICE_NAME = "gitstafette-client"

#: GitHub caps webhook payloads at 25 MB.
DEFAULT_MAX_BODY_BYTES = 25 * 1024 * 1024
#: Room for headers and framing around the body in one gRPC message.
GRPC_MESSAGE_OVERHEAD_BYTES = 1024 * 1024
#: New RPCs that gRPC's core holds until the server's event loop takes them up. Past the first number it
#: cancels some at random, past the second every one (grpc's own defaults: 1,000 and 3,000), which a burst of
#: clients connecting at once (a server restart with thousands of streams) reaches: they all would see
#: CANCELLED and come back later. An RPC waiting here costs a few KiB.
GRPC_MAX_PENDING_STREAMS = 20_000
GRPC_MAX_PENDING_STREAMS_HARD_LIMIT = 40_000
#: How long an RPC may wait there before gRPC's core cancels it (grpc's default: 30 s). The event loop takes
#: new streams up one at a time, each with its authorization and start cursor: a burst of thousands on a busy
#: machine can take longer than 30 s to drain, and the last streams of it would see CANCELLED (seen: 312 of a
#: 4,000-stream burst in a test run under load, tests/server/test_stream_failures.py).
GRPC_MAX_UNREQUESTED_S = 600

DEFAULT_SQLITE_PATH = "gitstafette.db"
DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
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

# ---- Redis store (store/redis/) ------------------------------------------------------------------
# Every key is "<prefix>:" + one of these (the prefix is the store URL's ?prefix=, so that several
# installations can share one Redis database). {repository_id} and {client_id} are filled in.

DEFAULT_REDIS_PREFIX = "gitstafette"
#: SET: every repository id the store holds events or cursors for
REDIS_REPOSITORIES_KEY = "repositories"
#: HASH: last_sequence (the per-repository counter; never reset, so sequences are never reused),
#: name (the latest repository full name seen), audit_count (orders audit records)
REDIS_REPOSITORY_KEY = "repo:{repository_id}"
#: STREAM: one entry per event, entry id "<sequence>-0"; fields delivery_id, event_type,
#: repository_name, received_at_ns, headers (JSON), body (bytes)
REDIS_EVENTS_KEY = "repo:{repository_id}:events"
#: HASH: delivery id → sequence, for storing a delivery once
REDIS_DELIVERIES_KEY = "repo:{repository_id}:deliveries"
#: ZSET: "<received_at_ns>:<delivery id>" scored by sequence: what pruning needs, without the bodies
REDIS_RECEIVED_AT_NS_KEY = "repo:{repository_id}:received_at_ns"
#: HASH: client id → highest acknowledged sequence (only ever raised)
REDIS_CURSORS_KEY = "repo:{repository_id}:cursors"
#: ZSET: sequences to send to a client id again (replayed dead letters), scored by sequence
REDIS_REPLAYS_KEY = "repo:{repository_id}:replays:{client_id}"
#: ZSET: audit records scored by sequence; members "<20-digit counter>[client, sequence, action, at_ns]"
REDIS_AUDIT_KEY = "repo:{repository_id}:audit"
#: HASH: [client id, repository id, sequence] (JSON) → its member in the ordered ZSET below
REDIS_DEAD_LETTERS_KEY = "dead_letters"
#: ZSET: "<20-digit failed_at_ns> <dead letter as JSON>", all scored 0 so that they sort by time exactly
REDIS_DEAD_LETTERS_BY_FAILED_AT_NS_KEY = "dead_letters:by_failed_at_ns"
#: STRING "<fencing token> <holder>", with an expiry: who serves the repository to the client id (one
#: connection on one replica at a time); set NX, renewed by its holder, deleted when it stops serving
REDIS_LEASE_KEY = "repo:{repository_id}:lease:{client_id}"
#: HASH: client id → the fencing token of the repository's latest lease (raised with each new holder)
REDIS_LEASE_TOKENS_KEY = "repo:{repository_id}:lease_tokens"
#: STREAM: (client_id, repository_id) of every lease given up, read with the notices: a replica standing
#: by takes over at once instead of when the lease would have expired
REDIS_LEASE_RELEASED_KEY = "lease_released"
#: Entries kept in that stream (approximately); one that is missed only delays a takeover to the expiry.
REDIS_LEASE_RELEASED_MAXLEN = 1_000
#: STREAM: (client_id, repository_id, origin) of every replay asked for, read with the notices: the replica
#: serving that repository to that client id sends the replays at once; kept as long as REDIS_LEASE_RELEASED_MAXLEN
REDIS_REPLAYS_REQUESTED_KEY = "replays_requested"
#: A lease not renewed expires after this long (the store URL's ?lease_ttl=): how long the repositories of a
#: replica that died (kill -9) wait before another replica serves them.
DEFAULT_REDIS_LEASE_TTL_MS = 5_000
MIN_REDIS_LEASE_TTL_MS = 300
#: The holder renews its lease every this much of its time to live; it stops serving once 0.9 of it,
#: counted from before the last renewal it sent, has passed without a renewal answered.
REDIS_LEASE_RENEW_FRACTION = 0.3
#: STREAM: (repository_id, sequence) of every append, read with a blocking XREAD by every replica
REDIS_NOTICES_KEY = "appended"
#: Entries kept in the notices stream (approximately); a replica that missed more re-reads the counters.
REDIS_NOTICES_MAXLEN = 10_000
#: A blocking read of the notices returns after this long without news (then blocks again): it bounds
#: how long a silently dead connection goes unnoticed. Events wake readers at once, not after this.
REDIS_NOTICES_BLOCK_MS = 15_000
#: Reads and the other commands that do not block; also the margin above REDIS_NOTICES_BLOCK_MS for the
#: blocking one.
REDIS_SOCKET_TIMEOUT_S = 10.0
#: Appending a webhook, checking health, and leases: what must fail fast when Redis hangs (a POST then
#: gets 503 in about this long, rather than after REDIS_SOCKET_TIMEOUT_S and a retry). Appending 25 MB to a
#: Redis on the same network takes a small fraction of it.
REDIS_INGEST_TIMEOUT_S = 2.0
REDIS_CONNECT_TIMEOUT_S = 2.0
#: The notices reader reconnects with backoff up to this.
REDIS_RECONNECT_MAX_S = 2.0
#: Appends that arrive while others are on their way to Redis go out together as one pipeline, of at most
#: this many, and this many body bytes (more when one webhook alone is larger).
REDIS_APPEND_BATCH = 256
REDIS_APPEND_BATCH_BYTES = 4 * 1024 * 1024
#: Events pruned by one script call at most (a Lua script blocks Redis while it runs).
REDIS_PRUNE_BATCH = 10_000
