import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("id", "parent", "sequence", "create_time", "level", "type", "message", "data")
    class Level(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        LEVEL_UNSPECIFIED: _ClassVar[Event.Level]
        LEVEL_INFO: _ClassVar[Event.Level]
        LEVEL_WARN: _ClassVar[Event.Level]
        LEVEL_ERROR: _ClassVar[Event.Level]
    LEVEL_UNSPECIFIED: Event.Level
    LEVEL_INFO: Event.Level
    LEVEL_WARN: Event.Level
    LEVEL_ERROR: Event.Level
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[Event.Type]
        TYPE_MESSAGE: _ClassVar[Event.Type]
        TYPE_METRICS: _ClassVar[Event.Type]
        TYPE_STATE: _ClassVar[Event.Type]
    TYPE_UNSPECIFIED: Event.Type
    TYPE_MESSAGE: Event.Type
    TYPE_METRICS: Event.Type
    TYPE_STATE: Event.Type
    ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    parent: str
    sequence: int
    create_time: _timestamp_pb2.Timestamp
    level: Event.Level
    type: Event.Type
    message: str
    data: _struct_pb2.Struct
    def __init__(self, id: _Optional[str] = ..., parent: _Optional[str] = ..., sequence: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., level: _Optional[_Union[Event.Level, str]] = ..., type: _Optional[_Union[Event.Type, str]] = ..., message: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
