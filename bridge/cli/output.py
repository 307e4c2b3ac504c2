"""How every `tunewire` command prints what the API answers: one shape for one object and
one for many, chosen with `--output/-o`.

`table` (the default) is for people: one object as a two-column table of its fields (nested
messages flattened as `validation.format`, lists of messages as their own tables below it),
many as one row each. `json` is the API's own JSON (proto field names), a list for many.
Any other value names a field (`id`, `fine_tuned_model`, `validation.example_count`), and
only its value is printed, one line per object, for scripts: `FILE=$(tunewire files list -o
id | head -1)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich.table import Table

from bridge.cli.common import console, err

Output = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        help="table, json, or one field to print alone (e.g. id), one line per object.",
    ),
]
Columns = dict[str, Callable[[Any], object]]
"""A list's table: column name -> what it shows of one object."""


def show(message: Message, output: str = "table") -> None:
    """Print one object."""
    if output == "json":
        console.print_json(_json(message))
    elif output != "table":
        print(_field(message, output))
    else:
        rows, lists = _flatten(message)
        console.print(_table(["field", "value"], [[k, v] for k, v in rows]))
        for name, items in lists:
            console.print(_items_table(name, items))


def show_list(messages: Sequence[Message], columns: Columns, output: str = "table") -> None:
    """Print many objects of one kind; `columns` makes the table's rows."""
    if output == "json":
        console.print_json(json.dumps([json.loads(_json(m)) for m in messages]))
    elif output != "table":
        for message in messages:
            print(_field(message, output))
    else:
        rows = [[_text(cell(m)) for cell in columns.values()] for m in messages]
        console.print(_table(list(columns), rows))


def enum_name(message: Message, field: str) -> str:
    """An enum field's value as people read it: STATE_PROCESSED -> processed."""
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    return _enum(descriptor, getattr(message, field))


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True)


def _field(message: Message, path: str) -> str:
    """The value at a dotted field path, as JSON writes it (strings bare)."""
    value: Any = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            fields = ", ".join(sorted(value)) if isinstance(value, dict) else "none"
            err.print(f"[red]error:[/red] --output: no field {path!r} (fields: {fields})")
            raise typer.Exit(2)
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value)


def _flatten(
    message: Message, prefix: str = ""
) -> tuple[list[tuple[str, str]], list[tuple[str, list[Message]]]]:
    """A message's set fields as (dotted name, text) rows, and its lists of messages."""
    rows: list[tuple[str, str]] = []
    lists: list[tuple[str, list[Message]]] = []
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            rows += [(f"{name}.{key}", _text(value[key])) for key in sorted(value)]
        elif field.is_repeated and field.message_type is not None:
            lists.append((name, list(value)))
        elif field.is_repeated:
            rows.append((name, ", ".join(_scalar(field, v) for v in value)))
        elif field.message_type is not None and not _well_known(field):
            inner, inner_lists = _flatten(value, name + ".")
            rows += inner
            lists += inner_lists
        else:
            rows.append((name, _scalar(field, value)))
    return rows, lists


def _items_table(name: str, items: list[Message]) -> Table:
    """A list of messages as a table whose columns are the fields any item sets."""
    flat = [dict(_flatten(item)[0]) for item in items]
    order = {field.name: i for i, field in enumerate(items[0].DESCRIPTOR.fields)}
    columns = sorted(
        dict.fromkeys(key for row in flat for key in row), key=lambda c: order[c.split(".")[0]]
    )
    table = _table(columns, [[row.get(c, "") for c in columns] for row in flat])
    table.title = f"{name} ({len(items)})"
    table.title_justify = "left"
    return table


def _scalar(field: FieldDescriptor, value: Any) -> str:
    if field.enum_type is not None:
        return _enum(field, value)
    if field.message_type is not None:  # a well-known type: Timestamp, Struct, Duration
        return _text(json_format.MessageToDict(value))
    return _text(value)


def _enum(field: FieldDescriptor, number: int) -> str:
    name = field.enum_type.values_by_number[number].name
    # Values are prefixed with their enum's name in upper snake case (buf's lint rule).
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", field.enum_type.name).upper() + "_"
    return name.removeprefix(prefix).lower()


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _well_known(field: FieldDescriptor) -> bool:
    return field.message_type.full_name.startswith("google.protobuf.")


def _table(columns: Iterable[str], rows: Iterable[Sequence[object]]) -> Table:
    # Ids are what people copy from these tables: fold long ones, never crop them.
    out = Table()
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*(str(cell) for cell in row))
    return out
