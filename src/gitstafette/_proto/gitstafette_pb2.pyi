from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WebhookEventsRequest(_message.Message):
    __slots__ = ("client_id", "repository_id", "last_received_event_id", "duration_secs")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_RECEIVED_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    repository_id: str
    last_received_event_id: int
    duration_secs: int
    def __init__(self, client_id: _Optional[str] = ..., repository_id: _Optional[str] = ..., last_received_event_id: _Optional[int] = ..., duration_secs: _Optional[int] = ...) -> None: ...

class WebhookEventsResponse(_message.Message):
    __slots__ = ("webhook_events",)
    WEBHOOK_EVENTS_FIELD_NUMBER: _ClassVar[int]
    webhook_events: _containers.RepeatedCompositeFieldContainer[WebhookEvent]
    def __init__(self, webhook_events: _Optional[_Iterable[_Union[WebhookEvent, _Mapping]]] = ...) -> None: ...

class WebhookEvent(_message.Message):
    __slots__ = ("event_id", "body", "headers")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    body: bytes
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    def __init__(self, event_id: _Optional[str] = ..., body: _Optional[bytes] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: str
    def __init__(self, name: _Optional[str] = ..., values: _Optional[str] = ...) -> None: ...

class WebhookEventPushRequest(_message.Message):
    __slots__ = ("cliend_id", "repository_id", "webhook_event")
    CLIEND_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENT_FIELD_NUMBER: _ClassVar[int]
    cliend_id: str
    repository_id: str
    webhook_event: WebhookEvent
    def __init__(self, cliend_id: _Optional[str] = ..., repository_id: _Optional[str] = ..., webhook_event: _Optional[_Union[WebhookEvent, _Mapping]] = ...) -> None: ...

class WebhookEventPushResponse(_message.Message):
    __slots__ = ("response_code", "response_description", "accepted")
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    response_code: str
    response_description: str
    accepted: bool
    def __init__(self, response_code: _Optional[str] = ..., response_description: _Optional[str] = ..., accepted: _Optional[bool] = ...) -> None: ...

class WebhookEventStatusRequest(_message.Message):
    __slots__ = ("client_id", "repository_id")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    repository_id: str
    def __init__(self, client_id: _Optional[str] = ..., repository_id: _Optional[str] = ...) -> None: ...

class WebhookEventStatusesRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class WebhookEventStatusResponse(_message.Message):
    __slots__ = ("server_id", "count", "repository_id", "status")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    count: int
    repository_id: str
    status: str
    def __init__(self, server_id: _Optional[str] = ..., count: _Optional[int] = ..., repository_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("subscribe", "ack", "failure", "acks")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    ack: Ack
    failure: Failure
    acks: Acks
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., acks: _Optional[_Union[Acks, _Mapping]] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("client_id", "repository_ids", "accepts_batches")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_IDS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_BATCHES_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    repository_ids: _containers.RepeatedScalarFieldContainer[str]
    accepts_batches: bool
    def __init__(self, client_id: _Optional[str] = ..., repository_ids: _Optional[_Iterable[str]] = ..., accepts_batches: _Optional[bool] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("repository_id", "sequence")
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    repository_id: str
    sequence: int
    def __init__(self, repository_id: _Optional[str] = ..., sequence: _Optional[int] = ...) -> None: ...

class Acks(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[Ack]
    def __init__(self, acks: _Optional[_Iterable[_Union[Ack, _Mapping]]] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("repository_id", "sequence", "reason", "status_code")
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    repository_id: str
    sequence: int
    reason: str
    status_code: int
    def __init__(self, repository_id: _Optional[str] = ..., sequence: _Optional[int] = ..., reason: _Optional[str] = ..., status_code: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("event", "heartbeat", "subscribed", "events")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event: RelayedEvent
    heartbeat: Heartbeat
    subscribed: Subscribed
    events: RelayedEvents
    def __init__(self, event: _Optional[_Union[RelayedEvent, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., events: _Optional[_Union[RelayedEvents, _Mapping]] = ...) -> None: ...

class RelayedEvents(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RelayedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[RelayedEvent, _Mapping]]] = ...) -> None: ...

class RelayedEvent(_message.Message):
    __slots__ = ("repository_id", "sequence", "webhook_event", "received_at_unix_nanos", "redelivery", "replay", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REPOSITORY_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_EVENT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    REDELIVERY_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    repository_id: str
    sequence: int
    webhook_event: WebhookEvent
    received_at_unix_nanos: int
    redelivery: int
    replay: bool
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, repository_id: _Optional[str] = ..., sequence: _Optional[int] = ..., webhook_event: _Optional[_Union[WebhookEvent, _Mapping]] = ..., received_at_unix_nanos: _Optional[int] = ..., redelivery: _Optional[int] = ..., replay: _Optional[bool] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("server_time_unix_nanos",)
    SERVER_TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    server_time_unix_nanos: int
    def __init__(self, server_time_unix_nanos: _Optional[int] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("server_id", "repository_ids")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_IDS_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    repository_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server_id: _Optional[str] = ..., repository_ids: _Optional[_Iterable[str]] = ...) -> None: ...
