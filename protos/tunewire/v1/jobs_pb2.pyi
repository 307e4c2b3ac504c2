import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tunewire.v1 import checkpoints_pb2 as _checkpoints_pb2
from tunewire.v1 import common_pb2 as _common_pb2
from tunewire.v1 import events_pb2 as _events_pb2
from tunewire.v1 import graders_pb2 as _graders_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Job(_message.Message):
    __slots__ = ("id", "base_model", "training_file", "validation_file", "method", "hyperparameters", "seed", "suffix", "metadata", "integrations", "state", "error", "fine_tuned_model", "trained_tokens", "result_files", "organization", "create_time", "finish_time", "estimated_finish", "progress", "compute", "update_time", "creator")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Job.State]
        STATE_VALIDATING_FILES: _ClassVar[Job.State]
        STATE_QUEUED: _ClassVar[Job.State]
        STATE_RUNNING: _ClassVar[Job.State]
        STATE_PAUSING: _ClassVar[Job.State]
        STATE_PAUSED: _ClassVar[Job.State]
        STATE_SUCCEEDED: _ClassVar[Job.State]
        STATE_FAILED: _ClassVar[Job.State]
        STATE_CANCELLED: _ClassVar[Job.State]
    STATE_UNSPECIFIED: Job.State
    STATE_VALIDATING_FILES: Job.State
    STATE_QUEUED: Job.State
    STATE_RUNNING: Job.State
    STATE_PAUSING: Job.State
    STATE_PAUSED: Job.State
    STATE_SUCCEEDED: Job.State
    STATE_FAILED: Job.State
    STATE_CANCELLED: Job.State
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FILE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FILE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INTEGRATIONS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNED_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FILES_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FINISH_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    base_model: str
    training_file: str
    validation_file: str
    method: Method
    hyperparameters: Hyperparameters
    seed: int
    suffix: str
    metadata: _containers.ScalarMap[str, str]
    integrations: _containers.RepeatedCompositeFieldContainer[Integration]
    state: Job.State
    error: _common_pb2.Error
    fine_tuned_model: str
    trained_tokens: int
    result_files: _containers.RepeatedScalarFieldContainer[str]
    organization: str
    create_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    estimated_finish: _timestamp_pb2.Timestamp
    progress: Progress
    compute: Compute
    update_time: _timestamp_pb2.Timestamp
    creator: str
    def __init__(self, id: _Optional[str] = ..., base_model: _Optional[str] = ..., training_file: _Optional[str] = ..., validation_file: _Optional[str] = ..., method: _Optional[_Union[Method, _Mapping]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., seed: _Optional[int] = ..., suffix: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., integrations: _Optional[_Iterable[_Union[Integration, _Mapping]]] = ..., state: _Optional[_Union[Job.State, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., fine_tuned_model: _Optional[str] = ..., trained_tokens: _Optional[int] = ..., result_files: _Optional[_Iterable[str]] = ..., organization: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., estimated_finish: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., compute: _Optional[_Union[Compute, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., creator: _Optional[str] = ...) -> None: ...

class Method(_message.Message):
    __slots__ = ("type", "reinforcement")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[Method.Type]
        TYPE_SUPERVISED: _ClassVar[Method.Type]
        TYPE_DPO: _ClassVar[Method.Type]
        TYPE_CLASSIFICATION: _ClassVar[Method.Type]
        TYPE_REINFORCEMENT: _ClassVar[Method.Type]
    TYPE_UNSPECIFIED: Method.Type
    TYPE_SUPERVISED: Method.Type
    TYPE_DPO: Method.Type
    TYPE_CLASSIFICATION: Method.Type
    TYPE_REINFORCEMENT: Method.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REINFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    type: Method.Type
    reinforcement: Reinforcement
    def __init__(self, type: _Optional[_Union[Method.Type, str]] = ..., reinforcement: _Optional[_Union[Reinforcement, _Mapping]] = ...) -> None: ...

class Reinforcement(_message.Message):
    __slots__ = ("grader", "eval_interval", "eval_samples", "compute_multiplier", "max_completion_tokens", "reasoning_effort")
    GRADER_FIELD_NUMBER: _ClassVar[int]
    EVAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    EVAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_EFFORT_FIELD_NUMBER: _ClassVar[int]
    grader: _graders_pb2.Grader
    eval_interval: int
    eval_samples: int
    compute_multiplier: float
    max_completion_tokens: int
    reasoning_effort: str
    def __init__(self, grader: _Optional[_Union[_graders_pb2.Grader, _Mapping]] = ..., eval_interval: _Optional[int] = ..., eval_samples: _Optional[int] = ..., compute_multiplier: _Optional[float] = ..., max_completion_tokens: _Optional[int] = ..., reasoning_effort: _Optional[str] = ...) -> None: ...

class Compute(_message.Message):
    __slots__ = ("workers", "gpus_per_worker", "sharding")
    class Sharding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SHARDING_UNSPECIFIED: _ClassVar[Compute.Sharding]
        SHARDING_REPLICATED: _ClassVar[Compute.Sharding]
        SHARDING_FSDP: _ClassVar[Compute.Sharding]
    SHARDING_UNSPECIFIED: Compute.Sharding
    SHARDING_REPLICATED: Compute.Sharding
    SHARDING_FSDP: Compute.Sharding
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    SHARDING_FIELD_NUMBER: _ClassVar[int]
    workers: int
    gpus_per_worker: int
    sharding: Compute.Sharding
    def __init__(self, workers: _Optional[int] = ..., gpus_per_worker: _Optional[int] = ..., sharding: _Optional[_Union[Compute.Sharding, str]] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "early_stopping_patience", "early_stopping_threshold", "checkpoint_every_steps")
    class TargetModules(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TARGET_MODULES_UNSPECIFIED: _ClassVar[Hyperparameters.TargetModules]
        TARGET_MODULES_QV: _ClassVar[Hyperparameters.TargetModules]
        TARGET_MODULES_QKVO: _ClassVar[Hyperparameters.TargetModules]
        TARGET_MODULES_QKVO_FFN: _ClassVar[Hyperparameters.TargetModules]
    TARGET_MODULES_UNSPECIFIED: Hyperparameters.TargetModules
    TARGET_MODULES_QV: Hyperparameters.TargetModules
    TARGET_MODULES_QKVO: Hyperparameters.TargetModules
    TARGET_MODULES_QKVO_FFN: Hyperparameters.TargetModules
    N_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    LORA_ALPHA_FIELD_NUMBER: _ClassVar[int]
    LORA_DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_PATIENCE_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    target_modules: Hyperparameters.TargetModules
    early_stopping_patience: int
    early_stopping_threshold: float
    checkpoint_every_steps: int
    def __init__(self, n_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate_multiplier: _Optional[float] = ..., beta: _Optional[float] = ..., lora_rank: _Optional[int] = ..., lora_alpha: _Optional[int] = ..., lora_dropout: _Optional[float] = ..., target_modules: _Optional[_Union[Hyperparameters.TargetModules, str]] = ..., early_stopping_patience: _Optional[int] = ..., early_stopping_threshold: _Optional[float] = ..., checkpoint_every_steps: _Optional[int] = ...) -> None: ...

class Integration(_message.Message):
    __slots__ = ("type", "project", "entity", "name", "tags", "tracking_uri", "experiment", "api_key", "has_api_key")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    HAS_API_KEY_FIELD_NUMBER: _ClassVar[int]
    type: str
    project: str
    entity: str
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    tracking_uri: str
    experiment: str
    api_key: str
    has_api_key: bool
    def __init__(self, type: _Optional[str] = ..., project: _Optional[str] = ..., entity: _Optional[str] = ..., name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., tracking_uri: _Optional[str] = ..., experiment: _Optional[str] = ..., api_key: _Optional[str] = ..., has_api_key: _Optional[bool] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "attempt")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: int
    attempt: int
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("job", "request_id")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job: Job
    request_id: str
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "metadata", "order_by", "after_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    metadata: _containers.ScalarMap[str, str]
    order_by: str
    after_id: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., order_by: _Optional[str] = ..., after_id: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token", "total_size")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    total_size: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class UpdateJobRequest(_message.Message):
    __slots__ = ("job", "update_mask")
    JOB_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    job: Job
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobEventsRequest(_message.Message):
    __slots__ = ("job_id", "page_size", "page_token", "after_sequence", "order_by", "after_id", "types")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    page_token: str
    after_sequence: int
    order_by: str
    after_id: str
    types: _containers.RepeatedScalarFieldContainer[_events_pb2.Event.Type]
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., after_sequence: _Optional[int] = ..., order_by: _Optional[str] = ..., after_id: _Optional[str] = ..., types: _Optional[_Iterable[_Union[_events_pb2.Event.Type, str]]] = ...) -> None: ...

class ListJobEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StreamJobEventsRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence", "max_batch_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    max_batch_size: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., max_batch_size: _Optional[int] = ...) -> None: ...

class StreamJobEventsResponse(_message.Message):
    __slots__ = ("event", "events")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event: _events_pb2.Event
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.Event]
    def __init__(self, event: _Optional[_Union[_events_pb2.Event, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_events_pb2.Event, _Mapping]]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id", "page_size", "page_token", "order_by", "after_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page_size: int
    page_token: str
    order_by: str
    after_id: str
    def __init__(self, job_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order_by: _Optional[str] = ..., after_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints", "next_page_token")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[_checkpoints_pb2.Checkpoint]
    next_page_token: str
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[_checkpoints_pb2.Checkpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
