from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from tunewire.v1 import checkpoints_pb2 as _checkpoints_pb2
from tunewire.v1 import common_pb2 as _common_pb2
from tunewire.v1 import events_pb2 as _events_pb2
from tunewire.v1 import exports_pb2 as _exports_pb2
from tunewire.v1 import jobs_pb2 as _jobs_pb2
from tunewire.v1 import models_pb2 as _models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
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
    __slots__ = ("job_id", "epoch", "kind")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Lease.Kind]
        KIND_TRAIN: _ClassVar[Lease.Kind]
        KIND_EXPORT: _ClassVar[Lease.Kind]
        KIND_SERVE: _ClassVar[Lease.Kind]
    KIND_UNSPECIFIED: Lease.Kind
    KIND_TRAIN: Lease.Kind
    KIND_EXPORT: Lease.Kind
    KIND_SERVE: Lease.Kind
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    epoch: int
    kind: Lease.Kind
    def __init__(self, job_id: _Optional[str] = ..., epoch: _Optional[int] = ..., kind: _Optional[_Union[Lease.Kind, str]] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "kinds", "pid", "host", "address")
    ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    kinds: _containers.RepeatedScalarFieldContainer[Lease.Kind]
    pid: int
    host: str
    address: str
    def __init__(self, id: _Optional[str] = ..., kinds: _Optional[_Iterable[_Union[Lease.Kind, str]]] = ..., pid: _Optional[int] = ..., host: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class AcquireLeaseRequest(_message.Message):
    __slots__ = ("worker", "wait_seconds")
    WORKER_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    worker: WorkerInfo
    wait_seconds: float
    def __init__(self, worker: _Optional[_Union[WorkerInfo, _Mapping]] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class AcquireLeaseResponse(_message.Message):
    __slots__ = ("lease", "heartbeat_seconds", "train", "export", "serve")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    SERVE_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    heartbeat_seconds: float
    train: TrainWork
    export: ExportWork
    serve: ServeWork
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., heartbeat_seconds: _Optional[float] = ..., train: _Optional[_Union[TrainWork, _Mapping]] = ..., export: _Optional[_Union[ExportWork, _Mapping]] = ..., serve: _Optional[_Union[ServeWork, _Mapping]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("key", "filename")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    key: str
    filename: str
    def __init__(self, key: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class TrainWork(_message.Message):
    __slots__ = ("job", "base_model", "training_file", "validation_file", "resume_checkpoint", "checkpoint_prefix", "model_prefix", "results_file", "tracking_files", "integrations")
    class TrackingFilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FILE_FIELD_NUMBER: _ClassVar[int]
    RESUME_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MODEL_PREFIX_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FILE_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FILES_FIELD_NUMBER: _ClassVar[int]
    INTEGRATIONS_FIELD_NUMBER: _ClassVar[int]
    job: _jobs_pb2.Job
    base_model: str
    training_file: BlobRef
    validation_file: BlobRef
    resume_checkpoint: str
    checkpoint_prefix: str
    model_prefix: str
    results_file: str
    tracking_files: _containers.ScalarMap[str, str]
    integrations: _containers.RepeatedCompositeFieldContainer[_jobs_pb2.Integration]
    def __init__(self, job: _Optional[_Union[_jobs_pb2.Job, _Mapping]] = ..., base_model: _Optional[str] = ..., training_file: _Optional[_Union[BlobRef, _Mapping]] = ..., validation_file: _Optional[_Union[BlobRef, _Mapping]] = ..., resume_checkpoint: _Optional[str] = ..., checkpoint_prefix: _Optional[str] = ..., model_prefix: _Optional[str] = ..., results_file: _Optional[str] = ..., tracking_files: _Optional[_Mapping[str, str]] = ..., integrations: _Optional[_Iterable[_Union[_jobs_pb2.Integration, _Mapping]]] = ...) -> None: ...

class ExportWork(_message.Message):
    __slots__ = ("export", "base_model", "adapter", "output")
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    export: _exports_pb2.Export
    base_model: str
    adapter: str
    output: str
    def __init__(self, export: _Optional[_Union[_exports_pb2.Export, _Mapping]] = ..., base_model: _Optional[str] = ..., adapter: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...

class ServeWork(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

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
    __slots__ = ("command",)
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    command: Command
    def __init__(self, command: _Optional[_Union[Command, str]] = ...) -> None: ...

class ReportCheckpointRequest(_message.Message):
    __slots__ = ("lease", "step", "epoch", "path", "metrics", "best", "adapter", "adapter_artifacts")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    step: int
    epoch: int
    path: str
    metrics: _checkpoints_pb2.Checkpoint.Metrics
    best: bool
    adapter: str
    adapter_artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Artifact]
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., path: _Optional[str] = ..., metrics: _Optional[_Union[_checkpoints_pb2.Checkpoint.Metrics, _Mapping]] = ..., best: _Optional[bool] = ..., adapter: _Optional[str] = ..., adapter_artifacts: _Optional[_Iterable[_Union[_common_pb2.Artifact, _Mapping]]] = ...) -> None: ...

class ReportCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _checkpoints_pb2.Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[_checkpoints_pb2.Checkpoint, _Mapping]] = ...) -> None: ...

class ReportResultRequest(_message.Message):
    __slots__ = ("lease", "outcome", "adapter_path", "metrics_csv_path", "trained_tokens", "error", "artifacts", "metrics_csv", "max_logit_diff", "int8_max_logit_diff", "tracking_files")
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
    class TrackingFilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Artifact
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Artifact, _Mapping]] = ...) -> None: ...
    LEASE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_PATH_FIELD_NUMBER: _ClassVar[int]
    METRICS_CSV_PATH_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_CSV_FIELD_NUMBER: _ClassVar[int]
    MAX_LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    INT8_MAX_LOGIT_DIFF_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FILES_FIELD_NUMBER: _ClassVar[int]
    lease: Lease
    outcome: ReportResultRequest.Outcome
    adapter_path: str
    metrics_csv_path: str
    trained_tokens: int
    error: _common_pb2.Error
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Artifact]
    metrics_csv: _common_pb2.Artifact
    max_logit_diff: float
    int8_max_logit_diff: float
    tracking_files: _containers.MessageMap[str, _common_pb2.Artifact]
    def __init__(self, lease: _Optional[_Union[Lease, _Mapping]] = ..., outcome: _Optional[_Union[ReportResultRequest.Outcome, str]] = ..., adapter_path: _Optional[str] = ..., metrics_csv_path: _Optional[str] = ..., trained_tokens: _Optional[int] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.Artifact, _Mapping]]] = ..., metrics_csv: _Optional[_Union[_common_pb2.Artifact, _Mapping]] = ..., max_logit_diff: _Optional[float] = ..., int8_max_logit_diff: _Optional[float] = ..., tracking_files: _Optional[_Mapping[str, _common_pb2.Artifact]] = ...) -> None: ...

class ReportResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InferenceServiceGenerateRequest(_message.Message):
    __slots__ = ("base_model", "adapter", "onnx_export", "request")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ONNX_EXPORT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    adapter: str
    onnx_export: str
    request: _models_pb2.GenerateRequest
    def __init__(self, base_model: _Optional[str] = ..., adapter: _Optional[str] = ..., onnx_export: _Optional[str] = ..., request: _Optional[_Union[_models_pb2.GenerateRequest, _Mapping]] = ...) -> None: ...

class InferenceServiceClassifyRequest(_message.Message):
    __slots__ = ("base_model", "adapter", "request")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    adapter: str
    request: _models_pb2.ClassifyRequest
    def __init__(self, base_model: _Optional[str] = ..., adapter: _Optional[str] = ..., request: _Optional[_Union[_models_pb2.ClassifyRequest, _Mapping]] = ...) -> None: ...

class UnloadAdapterRequest(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: str
    def __init__(self, adapter: _Optional[str] = ...) -> None: ...

class UnloadAdapterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
