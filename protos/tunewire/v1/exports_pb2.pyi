import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tunewire.v1 import common_pb2 as _common_pb2
from tunewire.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Export(_message.Message):
    __slots__ = ("id", "model_id", "format", "quantize_int8", "state", "error", "max_logit_diff", "int8_max_logit_diff", "artifacts", "create_time", "finish_time")
    class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FORMAT_UNSPECIFIED: _ClassVar[Export.Format]
        FORMAT_MERGED_SAFETENSORS: _ClassVar[Export.Format]
        FORMAT_ONNX: _ClassVar[Export.Format]
    FORMAT_UNSPECIFIED: Export.Format
    FORMAT_MERGED_SAFETENSORS: Export.Format
    FORMAT_ONNX: Export.Format
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Export.State]
        STATE_QUEUED: _ClassVar[Export.State]
        STATE_RUNNING: _ClassVar[Export.State]
        STATE_SUCCEEDED: _ClassVar[Export.State]
        STATE_FAILED: _ClassVar[Export.State]
    STATE_UNSPECIFIED: Export.State
    STATE_QUEUED: Export.State
    STATE_RUNNING: Export.State
    STATE_SUCCEEDED: Export.State
    STATE_FAILED: Export.State
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_INT8_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    INT8_MAX_LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_id: str
    format: Export.Format
    quantize_int8: bool
    state: Export.State
    error: _common_pb2.Error
    max_logit_diff: float
    int8_max_logit_diff: float
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Artifact]
    create_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., model_id: _Optional[str] = ..., format: _Optional[_Union[Export.Format, str]] = ..., quantize_int8: _Optional[bool] = ..., state: _Optional[_Union[Export.State, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., max_logit_diff: _Optional[float] = ..., int8_max_logit_diff: _Optional[float] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.Artifact, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateExportRequest(_message.Message):
    __slots__ = ("export",)
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    export: Export
    def __init__(self, export: _Optional[_Union[Export, _Mapping]] = ...) -> None: ...

class GetExportRequest(_message.Message):
    __slots__ = ("export_id",)
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    export_id: str
    def __init__(self, export_id: _Optional[str] = ...) -> None: ...

class ListExportsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExportsResponse(_message.Message):
    __slots__ = ("exports", "next_page_token")
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    exports: _containers.RepeatedCompositeFieldContainer[Export]
    next_page_token: str
    def __init__(self, exports: _Optional[_Iterable[_Union[Export, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListExportEventsRequest(_message.Message):
    __slots__ = ("export_id", "page_size", "page_token")
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    export_id: str
    page_size: int
    page_token: str
    def __init__(self, export_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExportEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DownloadExportArtifactRequest(_message.Message):
    __slots__ = ("export_id", "path")
    EXPORT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    export_id: str
    path: str
    def __init__(self, export_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class DownloadExportArtifactResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.Chunk
    def __init__(self, chunk: _Optional[_Union[_common_pb2.Chunk, _Mapping]] = ...) -> None: ...
