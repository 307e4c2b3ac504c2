"""Grader templates: `{{item.field}}`, `{{item.a.b[0]}}`, `{{sample.output_text}}` and
`{{sample.output_json.key}}`, as OpenAI's graders write them. A template is checked when
the grader is (`problems`), so a bad one is refused at create; rendering fills it from one
dataset item and one model sample."""

from __future__ import annotations

import json
import re
from typing import Any

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*|\d+")
NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices")


class TemplateError(ValueError):
    """A template that cannot be rendered for this item or sample."""


def _parse(expression: str) -> list[str] | str:
    """The path of one placeholder (`item.a[0].b` is item, a, 0, b), or why it is bad."""
    text = expression.strip()
    if not text:
        return "an empty placeholder {{}}"
    parts: list[str] = []
    for raw in text.replace("[", ".").replace("]", "").split("."):
        part = raw.strip().strip("'\"")
        if not SEGMENT.fullmatch(part):
            return f"{{{{{text}}}}} is not a path like item.field or sample.output_text"
        parts.append(part)
    if parts[0] not in NAMESPACES:
        return f"{{{{{text}}}}} names {parts[0]!r}; a template reads item.* or sample.*"
    if len(parts) == 1:
        return f"{{{{{text}}}}} names a namespace, not a field"
    if parts[0] == "sample" and parts[1] not in SAMPLE_FIELDS:
        return f"{{{{{text}}}}}: a sample has {', '.join(SAMPLE_FIELDS)}, not {parts[1]!r}"
    return parts


def problems(template: object) -> list[str]:
    """What is wrong with a template string (unbalanced braces, a path outside item.* and
    sample.*); empty when it is good."""
    if not isinstance(template, str):
        return ["must be a string"]
    found = []
    for match in PLACEHOLDER.finditer(template):
        parsed = _parse(match.group(1))
        if isinstance(parsed, str):
            found.append(parsed)
    rest = PLACEHOLDER.sub("", template)
    if "{{" in rest or "}}" in rest:
        found.append("has an unbalanced '{{' or '}}'")
    return found


def sample_namespace(output_text: str) -> dict[str, Any]:
    """The `sample` a template and a python grader see for one model output."""
    try:
        output_json = json.loads(output_text)
    except ValueError:
        output_json = None
    return {"output_text": output_text, "output_json": output_json, "output_tools": []}


def lookup(parts: list[str], item: Any, sample: dict[str, Any]) -> Any:
    value: Any = {"item": item, "sample": sample}
    for i, part in enumerate(parts):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise TemplateError(f"{'.'.join(parts[: i + 1])} is not in the {parts[0]}")
    return value


def render(template: str, item: Any, sample: dict[str, Any]) -> str:
    """`template` with each placeholder replaced by its value (strings as they are, other
    values as JSON); TemplateError when a path is missing from the item or sample."""

    def fill(match: re.Match[str]) -> str:
        parsed = _parse(match.group(1))
        if isinstance(parsed, str):
            raise TemplateError(parsed)
        value = lookup(parsed, item, sample)
        return value if isinstance(value, str) else json.dumps(value)

    return PLACEHOLDER.sub(fill, template)
