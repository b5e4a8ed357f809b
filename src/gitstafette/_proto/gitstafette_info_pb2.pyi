from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InstanceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELAY: _ClassVar[InstanceType]
    SERVER: _ClassVar[InstanceType]
    CLIENT: _ClassVar[InstanceType]
    HUB: _ClassVar[InstanceType]
    DISCOVERY: _ClassVar[InstanceType]
    EXPLORER: _ClassVar[InstanceType]
RELAY: InstanceType
SERVER: InstanceType
CLIENT: InstanceType
HUB: InstanceType
DISCOVERY: InstanceType
EXPLORER: InstanceType

class GetInfoRequest(_message.Message):
    __slots__ = ("client_id", "client_endpoint")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    client_endpoint: str
    def __init__(self, client_id: _Optional[str] = ..., client_endpoint: _Optional[str] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("alive", "instance_type", "version", "name", "server", "relay")
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    RELAY_FIELD_NUMBER: _ClassVar[int]
    alive: bool
    instance_type: InstanceType
    version: str
    name: str
    server: ServerInfo
    relay: ServerInfo
    def __init__(self, alive: _Optional[bool] = ..., instance_type: _Optional[_Union[InstanceType, str]] = ..., version: _Optional[str] = ..., name: _Optional[str] = ..., server: _Optional[_Union[ServerInfo, _Mapping]] = ..., relay: _Optional[_Union[ServerInfo, _Mapping]] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("hostname", "ip", "port", "protocol", "repositories")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ip: str
    port: str
    protocol: str
    repositories: str
    def __init__(self, hostname: _Optional[str] = ..., ip: _Optional[str] = ..., port: _Optional[str] = ..., protocol: _Optional[str] = ..., repositories: _Optional[str] = ...) -> None: ...
