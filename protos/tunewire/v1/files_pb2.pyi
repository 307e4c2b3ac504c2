import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tunewire.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class File(_message.Message):
    __slots__ = ("id", "filename", "purpose", "bytes", "sha256", "state", "create_time", "validation")
    class Purpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PURPOSE_UNSPECIFIED: _ClassVar[File.Purpose]
        PURPOSE_FINE_TUNE: _ClassVar[File.Purpose]
        PURPOSE_FINE_TUNE_RESULTS: _ClassVar[File.Purpose]
        PURPOSE_USER_DATA: _ClassVar[File.Purpose]
    PURPOSE_UNSPECIFIED: File.Purpose
    PURPOSE_FINE_TUNE: File.Purpose
    PURPOSE_FINE_TUNE_RESULTS: File.Purpose
    PURPOSE_USER_DATA: File.Purpose
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[File.State]
        STATE_UPLOADED: _ClassVar[File.State]
        STATE_PROCESSED: _ClassVar[File.State]
        STATE_ERROR: _ClassVar[File.State]
    STATE_UNSPECIFIED: File.State
    STATE_UPLOADED: File.State
    STATE_PROCESSED: File.State
    STATE_ERROR: File.State
    ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    filename: str
    purpose: File.Purpose
    bytes: int
    sha256: str
    state: File.State
    create_time: _timestamp_pb2.Timestamp
    validation: ValidationReport
    def __init__(self, id: _Optional[str] = ..., filename: _Optional[str] = ..., purpose: _Optional[_Union[File.Purpose, str]] = ..., bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., state: _Optional[_Union[File.State, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., validation: _Optional[_Union[ValidationReport, _Mapping]] = ...) -> None: ...

class ValidationReport(_message.Message):
    __slots__ = ("format", "example_count", "line_count", "token_estimate", "problems", "problem_count", "labels")
    class Problem(_message.Message):
        __slots__ = ("line", "path", "code", "message")
        LINE_FIELD_NUMBER: _ClassVar[int]
        PATH_FIELD_NUMBER: _ClassVar[int]
        CODE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        line: int
        path: str
        code: str
        message: str
        def __init__(self, line: _Optional[int] = ..., path: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
    class Label(_message.Message):
        __slots__ = ("label", "example_count", "first_line")
        LABEL_FIELD_NUMBER: _ClassVar[int]
        EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
        FIRST_LINE_FIELD_NUMBER: _ClassVar[int]
        label: str
        example_count: int
        first_line: int
        def __init__(self, label: _Optional[str] = ..., example_count: _Optional[int] = ..., first_line: _Optional[int] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    format: str
    example_count: int
    line_count: int
    token_estimate: int
    problems: _containers.RepeatedCompositeFieldContainer[ValidationReport.Problem]
    problem_count: int
    labels: _containers.RepeatedCompositeFieldContainer[ValidationReport.Label]
    def __init__(self, format: _Optional[str] = ..., example_count: _Optional[int] = ..., line_count: _Optional[int] = ..., token_estimate: _Optional[int] = ..., problems: _Optional[_Iterable[_Union[ValidationReport.Problem, _Mapping]]] = ..., problem_count: _Optional[int] = ..., labels: _Optional[_Iterable[_Union[ValidationReport.Label, _Mapping]]] = ...) -> None: ...

class UploadFileRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadFileMetadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadFileMetadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadFileMetadata(_message.Message):
    __slots__ = ("filename", "purpose")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    filename: str
    purpose: File.Purpose
    def __init__(self, filename: _Optional[str] = ..., purpose: _Optional[_Union[File.Purpose, str]] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "purpose", "order_by", "after_id")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    purpose: File.Purpose
    order_by: str
    after_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., purpose: _Optional[_Union[File.Purpose, str]] = ..., order_by: _Optional[str] = ..., after_id: _Optional[str] = ...) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("files", "next_page_token")
    FILES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[File]
    next_page_token: str
    def __init__(self, files: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class DownloadFileRequest(_message.Message):
    __slots__ = ("file_id",)
    FILE_ID_FIELD_NUMBER: _ClassVar[int]
    file_id: str
    def __init__(self, file_id: _Optional[str] = ...) -> None: ...

class DownloadFileResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.Chunk
    def __init__(self, chunk: _Optional[_Union[_common_pb2.Chunk, _Mapping]] = ...) -> None: ...
