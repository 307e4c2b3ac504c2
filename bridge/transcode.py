"""REST/JSON transcoding of the gRPC API, as grpc-gateway does it, read from the
`google.api.http` annotations of the descriptors at start-up.

A `Binding` is one annotated RPC: its HTTP method and path template, how a
request message is built from the path, the query and the body, and the OpenAPI
operation that documents it. JSON is protobuf's JSON mapping (json_format),
with the proto field names, as the CLI prints them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
)
from google.protobuf.message import Message

from bridge.errors import ApiError
from bridge.routing import parse_json

Type = FieldDescriptor
INT64_TYPES = {
    Type.TYPE_INT64,
    Type.TYPE_UINT64,
    Type.TYPE_SINT64,
    Type.TYPE_FIXED64,
    Type.TYPE_SFIXED64,
}
INT32_TYPES = {
    Type.TYPE_INT32,
    Type.TYPE_UINT32,
    Type.TYPE_SINT32,
    Type.TYPE_FIXED32,
    Type.TYPE_SFIXED32,
}
# Well-known types whose JSON form is a string, so a path or query value can set them.
STRING_WKT = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
WKT_SCHEMAS: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "example": "1.5s"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}
CURSOR_FIELD = "after_sequence"
SEQUENCE_FIELD = "sequence"
_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


@dataclass(frozen=True)
class Variable:
    field: str
    """Dotted field path in the request message."""
    param: str
    """The route's path parameter."""


@dataclass(frozen=True)
class Binding:
    method: MethodDescriptor
    http_method: str
    template: str
    path: str
    """The template as a Starlette path."""
    variables: tuple[Variable, ...]
    body: str
    """"" (no body), "*" (the whole request) or a request field name."""
    cursor: str | None
    """The request field a `Last-Event-ID` resumes from, for resumable streams."""
    event_id: tuple[str, ...]
    """Where a streamed response carries its sequence (the SSE `id:`); empty if nowhere."""

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    @property
    def operation_id(self) -> str:
        return f"{self.method.containing_service.name}_{self.method.name}"

    @property
    def has_verb(self) -> bool:
        return _split_verb(self.template)[1] is not None

    def callable(self, channel: grpc.aio.Channel) -> Any:
        """The gRPC multicallable of this method on `channel`."""
        make = channel.unary_stream if self.method.server_streaming else channel.unary_unary
        return make(
            f"/{self.method.containing_service.full_name}/{self.method.name}",
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )

    def sequence_of(self, reply: Message) -> str | None:
        value: Any = reply
        for name in self.event_id:
            value = getattr(value, name)
        return str(value) if self.event_id else None

    def build(
        self, path_params: Mapping[str, str], query: Sequence[tuple[str, str]], body: bytes
    ) -> Message:
        """The request message: body first, then query parameters, then the path."""
        message = self.request_class()
        if self.body:
            target = message if self.body == "*" else getattr(message, self.body)
            _parse_into(_json_body(body), target, "" if self.body == "*" else self.body)
        elif body.strip():
            raise ApiError.invalid([("body", f"{self.http_method} {self.template} takes no body")])
        bound = [v.field for v in self.variables]
        if self.body:
            bound.append(self.body)
        values = _query_values(message.DESCRIPTOR, query, bound)
        for variable in self.variables:
            leaf = _resolve(message.DESCRIPTOR, variable.field)
            _put(
                values,
                variable.field,
                _scalar(leaf[-1], path_params[variable.param], variable.field),
            )
        _parse_into(values, message, "")
        return message

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI operation (merged into what FastAPI writes for the route)."""
        descriptor = self.method.input_type
        bound = [v.field for v in self.variables] + ([self.body] if self.body else [])
        parameters = [
            {
                "name": v.param,
                "in": "path",
                "required": True,
                "description": f"`{v.field}` of {descriptor.full_name}",
                "schema": _value_schema(_resolve(descriptor, v.field)[-1]),
            }
            for v in self.variables
        ]
        if self.body != "*":
            parameters += _query_parameters(descriptor, bound)
        if self.cursor:
            parameters.append(
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "description": f"Resume after this event: sets `{self.cursor}`",
                    "schema": {"type": "string"},
                }
            )
        operation: dict[str, Any] = {"parameters": parameters}
        if self.body:
            schema = (
                _ref(descriptor)
                if self.body == "*"
                else _value_schema(descriptor.fields_by_name[self.body])
            )
            operation["requestBody"] = {"content": {"application/json": {"schema": schema}}}
        result = _ref(self.method.output_type)
        if self.method.server_streaming:
            frame = {
                "type": "object",
                "properties": {
                    "result": result,
                    "error": {"$ref": "#/components/schemas/google.rpc.Status"},
                },
            }
            content = {
                "application/x-ndjson": {"schema": frame},
                "text/event-stream": {
                    "schema": {"type": "string", "description": "The same frames as events"}
                },
            }
        else:
            content = {"application/json": {"schema": result}}
        operation["responses"] = {
            "200": {"description": "OK", "content": content},
            "default": {
                "description": "A google.rpc.Status",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/google.rpc.Status"}
                    }
                },
            },
        }
        return operation


def bindings(files: Iterable[FileDescriptor]) -> list[Binding]:
    """Every annotated RPC of `files`' services, in matching order: templates with
    a custom verb before those without, greedy `**` templates last, so a verb is
    matched only where a template has one and ids with colons stay whole."""
    found = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if options.HasExtension(annotations_pb2.http):
                    found.append(_binding(method, options.Extensions[annotations_pb2.http]))
    return sorted(found, key=lambda b: (not b.has_verb, ":path}" in b.path))


def _binding(method: MethodDescriptor, rule: Any) -> Binding:
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        http_method, template = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, template = kind.upper(), getattr(rule, kind)
    if rule.additional_bindings or rule.response_body:
        raise NotImplementedError(
            f"{method.full_name}: additional_bindings and response_body are not supported"
        )
    if rule.body not in ("", "*"):
        body = method.input_type.fields_by_name.get(rule.body)
        if body is None or body.message_type is None or body.is_repeated:
            raise ValueError(f"{method.full_name}: body {rule.body!r} is not a message field")
    path, verb = _split_verb(template)
    variables, segments = [], []
    for segment in _segments(path):
        match = _VARIABLE.fullmatch(segment)
        if match is None:
            if "*" in segment or "{" in segment:
                raise NotImplementedError(
                    f"{method.full_name}: segment {segment!r} is not supported"
                )
            segments.append(segment)
            continue
        field, pattern = match.group(1), match.group(2)
        if not _resolve(method.input_type, field):
            raise ValueError(f"{method.full_name}: no request field {field!r}")
        param = field.replace(".", "__")
        if pattern in (None, "*"):
            segments.append(f"{{{param}}}")
        elif pattern == "**":
            segments.append(f"{{{param}:path}}")
        else:
            raise NotImplementedError(
                f"{method.full_name}: variable pattern {pattern!r} is not supported"
            )
        variables.append(Variable(field, param))
    starlette_path = "/" + "/".join(segments) + (f":{verb}" if verb else "")
    return Binding(
        method=method,
        http_method=http_method,
        template=template,
        path=starlette_path,
        variables=tuple(variables),
        body=rule.body,
        cursor=CURSOR_FIELD if CURSOR_FIELD in method.input_type.fields_by_name else None,
        event_id=_path_to(method.output_type, SEQUENCE_FIELD) if method.server_streaming else (),
    )


def _split_verb(template: str) -> tuple[str, str | None]:
    """`/v1/jobs/{job_id}:cancel` -> (`/v1/jobs/{job_id}`, `cancel`)."""
    last = max(template.rfind("/"), template.rfind("}"))
    colon = template.find(":", last + 1)
    return (template, None) if colon < 0 else (template[:colon], template[colon + 1 :])


def _segments(path: str) -> list[str]:
    """Split on `/` outside braces (a variable's pattern may contain `/`)."""
    segments, current, depth = [], "", 0
    for char in path.lstrip("/"):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "/" and depth == 0:
            segments.append(current)
            current = ""
        else:
            current += char
    return [*segments, current]


def _path_to(descriptor: Descriptor, name: str, depth: int = 2) -> tuple[str, ...]:
    """The field path to an integer field `name`, searching `depth` levels down."""
    for field in descriptor.fields:
        if field.name == name and field.type in INT64_TYPES | INT32_TYPES:
            return (field.name,)
        if depth > 1 and field.message_type is not None and not field.is_repeated:
            below = _path_to(field.message_type, name, depth - 1)
            if below:
                return (field.name, *below)
    return ()


# --- building requests ----------------------------------------------------------------


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise ApiError.invalid([("body", "must be a JSON object")])
    return payload


def _parse_into(values: dict[str, Any], message: Message, field: str) -> None:
    try:
        json_format.ParseDict(values, message)
    except json_format.ParseError as error:
        path, reason = _parse_error(str(error))
        named = ".".join(filter(None, (field, path))) or "body"
        raise ApiError.invalid([(named, reason)]) from None


# json_format names the bad field as `... at Job.hyperparameters.n_epochs.`, or only as a
# chain of `Failed to parse hyperparameters field: Failed to parse n_epochs field: ...`.
PARSE_AT = re.compile(r" at [A-Za-z0-9_]+\.([\w.]+?)\.*$")
PARSE_FIELD = re.compile(r"Failed to parse (\w+) field: ")
UNKNOWN_FIELD = re.compile(r'has no field named "(\w+)"')


def _parse_error(message: str) -> tuple[str, str]:
    """(the bad field's path below the parsed message, why) from a ParseError's text."""
    chain = PARSE_FIELD.findall(message)
    reason = PARSE_FIELD.sub("", message)
    if unknown := UNKNOWN_FIELD.search(reason):
        return ".".join([*chain, unknown.group(1)]), f"unknown field {unknown.group(1)!r}"
    if at := PARSE_AT.search(reason):
        return at.group(1), reason[: at.start()]
    return ".".join(chain), reason.rstrip(".")


def _resolve(descriptor: Descriptor, dotted: str) -> list[FieldDescriptor]:
    """The fields along a dotted path, each named by its proto or JSON name; [] if none."""
    fields = []
    current: Descriptor | None = descriptor
    for name in dotted.split("."):
        if current is None:
            return []
        field = current.fields_by_name.get(name) or next(
            (f for f in current.fields if f.json_name == name), None
        )
        if field is None:
            return []
        fields.append(field)
        current = field.message_type if field.message_type and not field.is_repeated else None
    return fields


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _scalar(field: FieldDescriptor, raw: str, name: str) -> Any:
    """A path or query string as the JSON value json_format takes for `field`."""
    if field.type == Type.TYPE_BOOL:
        if raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
        raise ApiError.invalid([(name, f"must be true or false, not {raw!r}")])
    if field.message_type is not None and field.message_type.full_name not in STRING_WKT:
        raise ApiError.invalid([(name, f"is a message: set its fields, as `{name}.<field>=…`")])
    return raw


def _put(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        values = values.setdefault(name, {})
    values[leaf] = value


def _query_values(
    descriptor: Descriptor, query: Sequence[tuple[str, str]], bound: Sequence[str]
) -> dict[str, Any]:
    """Query parameters as a JSON-mapping dict: `a.b=1`, repeated `tag=x&tag=y`,
    and maps as `metadata[key]=value`."""
    values: dict[str, Any] = {}
    for key, raw in query:
        name, bracket, map_key = key.partition("[")
        fields = _resolve(descriptor, name)
        if not fields:
            raise ApiError.invalid([(key, "unknown query parameter")])
        dotted = ".".join(f.name for f in fields)
        if any(dotted == b or dotted.startswith(b + ".") for b in bound):
            raise ApiError.invalid([(key, "is set by the path or the body, not the query")])
        leaf = fields[-1]
        node = values
        for parent in fields[:-1]:
            node = node.setdefault(parent.name, {})
        if bracket:
            if not _is_map(leaf) or not map_key.endswith("]"):
                raise ApiError.invalid([(key, f"use `{name}[key]=value` only for a map field")])
            entry = leaf.message_type.fields_by_name["value"]
            node.setdefault(leaf.name, {})[map_key[:-1]] = _scalar(entry, raw, key)
        elif _is_map(leaf):
            raise ApiError.invalid([(key, f"is a map: use `{name}[key]=value`")])
        elif leaf.is_repeated:
            node.setdefault(leaf.name, []).append(_scalar(leaf, raw, key))
        elif leaf.name in node:
            raise ApiError.invalid([(key, "given more than once")])
        else:
            node[leaf.name] = _scalar(leaf, raw, key)
    return values


# --- OpenAPI ----------------------------------------------------------------------------


def _query_parameters(
    descriptor: Descriptor,
    bound: Sequence[str],
    prefix: str = "",
    seen: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    parameters = []
    for field in descriptor.fields:
        dotted = prefix + field.name
        if dotted in bound:
            continue
        if _is_map(field):
            parameters.append(
                {
                    "name": dotted,
                    "in": "query",
                    "style": "deepObject",
                    "explode": True,
                    "description": f"`{dotted}[key]=value`",
                    "schema": _field_schema(field),
                }
            )
        elif (
            field.message_type is not None
            and field.message_type.full_name not in STRING_WKT
            and not field.is_repeated
            and field.message_type.full_name not in seen  # recursive messages stop here
        ):
            parameters += _query_parameters(
                field.message_type, bound, dotted + ".", seen | {descriptor.full_name}
            )
        elif field.message_type is None or field.message_type.full_name in STRING_WKT:
            parameters.append({"name": dotted, "in": "query", "schema": _field_schema(field)})
    return parameters


def _ref(descriptor: Descriptor) -> dict[str, Any]:
    if descriptor.full_name in WKT_SCHEMAS:
        return WKT_SCHEMAS[descriptor.full_name]
    return {"$ref": f"#/components/schemas/{descriptor.full_name}"}


def _value_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.message_type is not None:
        return _ref(field.message_type)
    if field.enum_type is not None:
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    if field.type in INT64_TYPES:
        # The JSON mapping writes 64-bit integers as strings.
        return {"type": "string", "format": "int64"}
    if field.type in INT32_TYPES:
        return {"type": "integer", "format": "int32"}
    if field.type in (Type.TYPE_DOUBLE, Type.TYPE_FLOAT):
        return {"type": "number"}
    if field.type == Type.TYPE_BOOL:
        return {"type": "boolean"}
    if field.type == Type.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    return {"type": "string"}


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if _is_map(field):
        return {
            "type": "object",
            "additionalProperties": _value_schema(field.message_type.fields_by_name["value"]),
        }
    schema = _value_schema(field)
    return {"type": "array", "items": schema} if field.is_repeated else schema


def _message_schema(descriptor: Descriptor) -> dict[str, Any]:
    properties, required = {}, []
    for field in descriptor.fields:
        behaviors = set(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])
        schema = dict(_field_schema(field))
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if field_behavior_pb2.REQUIRED in behaviors:
            required.append(field.name)
        properties[field.name] = schema
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def schemas(roots: Iterable[Descriptor]) -> dict[str, dict[str, Any]]:
    """OpenAPI component schemas of `roots` and every message they reach."""
    out: dict[str, dict[str, Any]] = {}
    pending = list(roots)
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in out or descriptor.full_name in WKT_SCHEMAS:
            continue
        if descriptor.GetOptions().map_entry:
            pending += [f.message_type for f in descriptor.fields if f.message_type]
            continue
        out[descriptor.full_name] = _message_schema(descriptor)
        pending += [f.message_type for f in descriptor.fields if f.message_type is not None]
    return out
