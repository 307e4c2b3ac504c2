import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tunewire.v1 import files_pb2 as _files_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Upload(_message.Message):
    __slots__ = ("id", "filename", "purpose", "bytes", "mime_type", "state", "create_time", "expire_time", "file", "part_count", "received_bytes")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Upload.State]
        STATE_PENDING: _ClassVar[Upload.State]
        STATE_COMPLETED: _ClassVar[Upload.State]
        STATE_CANCELLED: _ClassVar[Upload.State]
        STATE_EXPIRED: _ClassVar[Upload.State]
    STATE_UNSPECIFIED: Upload.State
    STATE_PENDING: Upload.State
    STATE_COMPLETED: Upload.State
    STATE_CANCELLED: Upload.State
    STATE_EXPIRED: Upload.State
    ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    PART_COUNT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    filename: str
    purpose: _files_pb2.File.Purpose
    bytes: int
    mime_type: str
    state: Upload.State
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    file: _files_pb2.File
    part_count: int
    received_bytes: int
    def __init__(self, id: _Optional[str] = ..., filename: _Optional[str] = ..., purpose: _Optional[_Union[_files_pb2.File.Purpose, str]] = ..., bytes: _Optional[int] = ..., mime_type: _Optional[str] = ..., state: _Optional[_Union[Upload.State, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., file: _Optional[_Union[_files_pb2.File, _Mapping]] = ..., part_count: _Optional[int] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class UploadPart(_message.Message):
    __slots__ = ("id", "upload_id", "bytes", "sha256", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    upload_id: str
    bytes: int
    sha256: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., upload_id: _Optional[str] = ..., bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateUploadRequest(_message.Message):
    __slots__ = ("upload",)
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    upload: Upload
    def __init__(self, upload: _Optional[_Union[Upload, _Mapping]] = ...) -> None: ...

class GetUploadRequest(_message.Message):
    __slots__ = ("upload_id",)
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    def __init__(self, upload_id: _Optional[str] = ...) -> None: ...

class AddUploadPartRequest(_message.Message):
    __slots__ = ("upload_id", "chunk")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    chunk: bytes
    def __init__(self, upload_id: _Optional[str] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class CompleteUploadRequest(_message.Message):
    __slots__ = ("upload_id", "part_ids", "md5")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PART_IDS_FIELD_NUMBER: _ClassVar[int]
    MD5_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    part_ids: _containers.RepeatedScalarFieldContainer[str]
    md5: str
    def __init__(self, upload_id: _Optional[str] = ..., part_ids: _Optional[_Iterable[str]] = ..., md5: _Optional[str] = ...) -> None: ...

class CancelUploadRequest(_message.Message):
    __slots__ = ("upload_id",)
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    def __init__(self, upload_id: _Optional[str] = ...) -> None: ...
