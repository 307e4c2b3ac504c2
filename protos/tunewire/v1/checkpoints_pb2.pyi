import datetime

from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Checkpoint(_message.Message):
    __slots__ = ("id", "job_id", "step", "epoch", "model", "metrics", "create_time", "best")
    class Metrics(_message.Message):
        __slots__ = ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy")
        TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
        TRAIN_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
        VALID_LOSS_FIELD_NUMBER: _ClassVar[int]
        VALID_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
        FULL_VALID_LOSS_FIELD_NUMBER: _ClassVar[int]
        FULL_VALID_MEAN_TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
        train_loss: float
        train_mean_token_accuracy: float
        valid_loss: float
        valid_mean_token_accuracy: float
        full_valid_loss: float
        full_valid_mean_token_accuracy: float
        def __init__(self, train_loss: _Optional[float] = ..., train_mean_token_accuracy: _Optional[float] = ..., valid_loss: _Optional[float] = ..., valid_mean_token_accuracy: _Optional[float] = ..., full_valid_loss: _Optional[float] = ..., full_valid_mean_token_accuracy: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    id: str
    job_id: str
    step: int
    epoch: int
    model: str
    metrics: Checkpoint.Metrics
    create_time: _timestamp_pb2.Timestamp
    best: bool
    def __init__(self, id: _Optional[str] = ..., job_id: _Optional[str] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., model: _Optional[str] = ..., metrics: _Optional[_Union[Checkpoint.Metrics, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., best: _Optional[bool] = ...) -> None: ...
