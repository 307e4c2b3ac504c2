from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from tunewire.v1 import checkpoints_pb2 as _checkpoints_pb2
from tunewire.v1 import common_pb2 as _common_pb2
from tunewire.v1 import events_pb2 as _events_pb2
from tunewire.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Command(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_UNSPECIFIED: _ClassVar[Command]
    COMMAND_CONTINUE: _ClassVar[Command]
    COMMAND_CANCEL: _ClassVar[Command]
    COMMAND_PAUSE: _ClassVar[Command]
COMMAND_UNSPECIFIED: Command
COMMAND_CONTINUE: Command
COMMAND_CANCEL: Command
COMMAND_PAUSE: Command

class Lease(_message.Message):
    __slots__ = ("job_id", "epoch")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    epoch: int
    def __init__(self, job_id: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class StartAttemptRequest(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class StartAttemptResponse(_message.Message):
    __slots__ = ("job", "base_model_path", "training_file_path", "validation_file_path", "output_dir", "resume_checkpoint_path", "training_filename", "validation_filename")
    JOB_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FILE_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    RESUME_CHECKPOINT_PATH_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILENAME_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FILENAME_FIELD_NUMBER: _ClassVar[int]
    job: _jobs_pb2.Job
    base_model_path: str
    training_file_path: str
    validation_file_path: str
    output_dir: str
    resume_checkpoint_path: str
    training_filename: str
    validation_filename: str
    def __init__(self, job: _Optional[_Union[_jobs_pb2.Job, _Mapping]] = ..., base_model_path: _Optional[str] = ..., training_file_path: _Optional[str] = ..., validation_file_path: _Optional[str] = ..., output_dir: _Optional[str] = ..., resume_checkpoint_path: _Optional[str] = ..., training_filename: _Optional[str] = ..., validation_filename: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("command",)
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    command: Command
    def __init__(self, command: _Optional[_Union[Command, str]] = ...) -> None: ...

class ReportPlanRequest(_message.Message):
    __slots__ = ("lease", "hyperparameters", "total_steps", "start_step", "seed")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    hyperparameters: _jobs_pb2.Hyperparameters
    total_steps: int
    start_step: int
    seed: int
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., hyperparameters: _Optional[_Union[_jobs_pb2.Hyperparameters, _Mapping]] = ..., total_steps: _Optional[int] = ..., start_step: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ReportPlanResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportEventRequest(_message.Message):
    __slots__ = ("lease", "level", "message", "data", "dedupe_key")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_KEY_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    level: _events_pb2.Event.Level
    message: str
    data: _struct_pb2.Struct
    dedupe_key: str
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., level: _Optional[_Union[_events_pb2.Event.Level, str]] = ..., message: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dedupe_key: _Optional[str] = ...) -> None: ...

class ReportEventResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("lease", "step", "total_steps", "epoch", "metrics", "trained_tokens")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    step: int
    total_steps: int
    epoch: int
    metrics: _struct_pb2.Struct
    trained_tokens: int
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., metrics: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., trained_tokens: _Optional[int] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportCheckpointRequest(_message.Message):
    __slots__ = ("lease", "step", "epoch", "path", "metrics", "best")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    step: int
    epoch: int
    path: str
    metrics: _checkpoints_pb2.Checkpoint.Metrics
    best: bool
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., path: _Optional[str] = ..., metrics: _Optional[_Union[_checkpoints_pb2.Checkpoint.Metrics, _Mapping]] = ..., best: _Optional[bool] = ...) -> None: ...

class ReportCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _checkpoints_pb2.Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[_checkpoints_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("lease", "outcome", "adapter_path", "metrics_csv_path", "trained_tokens", "error")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[ReportResultRequest.Outcome]
        OUTCOME_SUCCEEDED: _ClassVar[ReportResultRequest.Outcome]
        OUTCOME_FAILED: _ClassVar[ReportResultRequest.Outcome]
        OUTCOME_CANCELLED: _ClassVar[ReportResultRequest.Outcome]
        OUTCOME_PAUSED: _ClassVar[ReportResultRequest.Outcome]
    OUTCOME_UNSPECIFIED: ReportResultRequest.Outcome
    OUTCOME_SUCCEEDED: ReportResultRequest.Outcome
    OUTCOME_FAILED: ReportResultRequest.Outcome
    OUTCOME_CANCELLED: ReportResultRequest.Outcome
    OUTCOME_PAUSED: ReportResultRequest.Outcome
    LEASE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_CSV_PATH_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    outcome: ReportResultRequest.Outcome
    adapter_path: str
    metrics_csv_path: str
    trained_tokens: int
    error: _common_pb2.Error
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., outcome: _Optional[_Union[ReportResultRequest.Outcome, str]] = ..., adapter_path: _Optional[str] = ..., metrics_csv_path: _Optional[str] = ..., trained_tokens: _Optional[int] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
