from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Grader(_message.Message):
    __slots__ = ("name", "string_check", "text_similarity", "python", "score_model", "label_model", "multi")
    class StringCheck(_message.Message):
        __slots__ = ("input", "reference", "operation")
        INPUT_FIELD_NUMBER: _ClassVar[int]
        REFERENCE_FIELD_NUMBER: _ClassVar[int]
        OPERATION_FIELD_NUMBER: _ClassVar[int]
        input: str
        reference: str
        operation: str
        def __init__(self, input: _Optional[str] = ..., reference: _Optional[str] = ..., operation: _Optional[str] = ...) -> None: ...
    class TextSimilarity(_message.Message):
        __slots__ = ("input", "reference", "evaluation_metric")
        INPUT_FIELD_NUMBER: _ClassVar[int]
        REFERENCE_FIELD_NUMBER: _ClassVar[int]
        EVALUATION_METRIC_FIELD_NUMBER: _ClassVar[int]
        input: str
        reference: str
        evaluation_metric: str
        def __init__(self, input: _Optional[str] = ..., reference: _Optional[str] = ..., evaluation_metric: _Optional[str] = ...) -> None: ...
    class Python(_message.Message):
        __slots__ = ("source", "image_tag")
        SOURCE_FIELD_NUMBER: _ClassVar[int]
        IMAGE_TAG_FIELD_NUMBER: _ClassVar[int]
        source: str
        image_tag: str
        def __init__(self, source: _Optional[str] = ..., image_tag: _Optional[str] = ...) -> None: ...
    class Message(_message.Message):
        __slots__ = ("role", "content")
        ROLE_FIELD_NUMBER: _ClassVar[int]
        CONTENT_FIELD_NUMBER: _ClassVar[int]
        role: str
        content: str
        def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...
    class SamplingParams(_message.Message):
        __slots__ = ("temperature", "top_p", "seed", "max_completions_tokens", "reasoning_effort")
        TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
        TOP_P_FIELD_NUMBER: _ClassVar[int]
        SEED_FIELD_NUMBER: _ClassVar[int]
        MAX_COMPLETIONS_TOKENS_FIELD_NUMBER: _ClassVar[int]
        REASONING_EFFORT_FIELD_NUMBER: _ClassVar[int]
        temperature: float
        top_p: float
        seed: int
        max_completions_tokens: int
        reasoning_effort: str
        def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., max_completions_tokens: _Optional[int] = ..., reasoning_effort: _Optional[str] = ...) -> None: ...
    class ScoreModel(_message.Message):
        __slots__ = ("model", "input", "range", "sampling_params")
        MODEL_FIELD_NUMBER: _ClassVar[int]
        INPUT_FIELD_NUMBER: _ClassVar[int]
        RANGE_FIELD_NUMBER: _ClassVar[int]
        SAMPLING_PARAMS_FIELD_NUMBER: _ClassVar[int]
        model: str
        input: _containers.RepeatedCompositeFieldContainer[Grader.Message]
        range: _containers.RepeatedScalarFieldContainer[float]
        sampling_params: Grader.SamplingParams
        def __init__(self, model: _Optional[str] = ..., input: _Optional[_Iterable[_Union[Grader.Message, _Mapping]]] = ..., range: _Optional[_Iterable[float]] = ..., sampling_params: _Optional[_Union[Grader.SamplingParams, _Mapping]] = ...) -> None: ...
    class LabelModel(_message.Message):
        __slots__ = ("model", "input", "labels", "passing_labels")
        MODEL_FIELD_NUMBER: _ClassVar[int]
        INPUT_FIELD_NUMBER: _ClassVar[int]
        LABELS_FIELD_NUMBER: _ClassVar[int]
        PASSING_LABELS_FIELD_NUMBER: _ClassVar[int]
        model: str
        input: _containers.RepeatedCompositeFieldContainer[Grader.Message]
        labels: _containers.RepeatedScalarFieldContainer[str]
        passing_labels: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, model: _Optional[str] = ..., input: _Optional[_Iterable[_Union[Grader.Message, _Mapping]]] = ..., labels: _Optional[_Iterable[str]] = ..., passing_labels: _Optional[_Iterable[str]] = ...) -> None: ...
    class Multi(_message.Message):
        __slots__ = ("graders", "calculate_output")
        class GradersEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Grader
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Grader, _Mapping]] = ...) -> None: ...
        GRADERS_FIELD_NUMBER: _ClassVar[int]
        CALCULATE_OUTPUT_FIELD_NUMBER: _ClassVar[int]
        graders: _containers.MessageMap[str, Grader]
        calculate_output: str
        def __init__(self, graders: _Optional[_Mapping[str, Grader]] = ..., calculate_output: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRING_CHECK_FIELD_NUMBER: _ClassVar[int]
    TEXT_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    SCORE_MODEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_MODEL_FIELD_NUMBER: _ClassVar[int]
    MULTI_FIELD_NUMBER: _ClassVar[int]
    name: str
    string_check: Grader.StringCheck
    text_similarity: Grader.TextSimilarity
    python: Grader.Python
    score_model: Grader.ScoreModel
    label_model: Grader.LabelModel
    multi: Grader.Multi
    def __init__(self, name: _Optional[str] = ..., string_check: _Optional[_Union[Grader.StringCheck, _Mapping]] = ..., text_similarity: _Optional[_Union[Grader.TextSimilarity, _Mapping]] = ..., python: _Optional[_Union[Grader.Python, _Mapping]] = ..., score_model: _Optional[_Union[Grader.ScoreModel, _Mapping]] = ..., label_model: _Optional[_Union[Grader.LabelModel, _Mapping]] = ..., multi: _Optional[_Union[Grader.Multi, _Mapping]] = ...) -> None: ...

class RunGraderRequest(_message.Message):
    __slots__ = ("grader", "model_sample", "item")
    GRADER_FIELD_NUMBER: _ClassVar[int]
    MODEL_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    grader: Grader
    model_sample: str
    item: _struct_pb2.Struct
    def __init__(self, grader: _Optional[_Union[Grader, _Mapping]] = ..., model_sample: _Optional[str] = ..., item: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RunGraderResponse(_message.Message):
    __slots__ = ("reward", "sub_rewards", "metadata")
    class Metadata(_message.Message):
        __slots__ = ("name", "type", "errors", "error_details", "execution_time", "token_usage", "token_usage_per_model")
        class ErrorDetailsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        class TokenUsagePerModelEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: int
            def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
        NAME_FIELD_NUMBER: _ClassVar[int]
        TYPE_FIELD_NUMBER: _ClassVar[int]
        ERRORS_FIELD_NUMBER: _ClassVar[int]
        ERROR_DETAILS_FIELD_NUMBER: _ClassVar[int]
        EXECUTION_TIME_FIELD_NUMBER: _ClassVar[int]
        TOKEN_USAGE_FIELD_NUMBER: _ClassVar[int]
        TOKEN_USAGE_PER_MODEL_FIELD_NUMBER: _ClassVar[int]
        name: str
        type: str
        errors: _containers.RepeatedScalarFieldContainer[str]
        error_details: _containers.ScalarMap[str, str]
        execution_time: float
        token_usage: int
        token_usage_per_model: _containers.ScalarMap[str, int]
        def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., errors: _Optional[_Iterable[str]] = ..., error_details: _Optional[_Mapping[str, str]] = ..., execution_time: _Optional[float] = ..., token_usage: _Optional[int] = ..., token_usage_per_model: _Optional[_Mapping[str, int]] = ...) -> None: ...
    class SubRewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SUB_REWARDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    reward: float
    sub_rewards: _containers.ScalarMap[str, float]
    metadata: RunGraderResponse.Metadata
    def __init__(self, reward: _Optional[float] = ..., sub_rewards: _Optional[_Mapping[str, float]] = ..., metadata: _Optional[_Union[RunGraderResponse.Metadata, _Mapping]] = ...) -> None: ...

class ValidateGraderRequest(_message.Message):
    __slots__ = ("grader",)
    GRADER_FIELD_NUMBER: _ClassVar[int]
    grader: Grader
    def __init__(self, grader: _Optional[_Union[Grader, _Mapping]] = ...) -> None: ...

class ValidateGraderResponse(_message.Message):
    __slots__ = ("grader",)
    GRADER_FIELD_NUMBER: _ClassVar[int]
    grader: Grader
    def __init__(self, grader: _Optional[_Union[Grader, _Mapping]] = ...) -> None: ...
