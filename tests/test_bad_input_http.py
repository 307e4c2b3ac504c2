"""schemathesis against the REST bridge's own OpenAPI document, with a real key: for every
operation, generated requests (valid and not) never get a 5xx, and every response matches
the schema the document gives for it.

A server of its own with no trainer slots, so generated jobs stay queued and no fuzzed
request starts a trainer.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import Server, chat_lines, launch
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

REST_READY = re.compile(r"tunewire: serving REST on (\S+):(\d+)")
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("schemathesis")
    srv: Server = launch(root / "home", models_dir, root / "logs")
    try:
        org = srv.default
        org.upload(chat_lines(12, "fuzz"))  # something for the lists to show
        deadline = time.monotonic() + 30
        while not (ready := REST_READY.search(srv.stdout)):
            assert time.monotonic() < deadline, "the REST bridge did not start"
            time.sleep(0.1)
        url = f"http://{ready.group(1)}:{ready.group(2)}"
        document = httpx.get(f"{url}/openapi.json", timeout=30).json()
        yield url, document, org.key
    finally:
        srv.terminate()
        srv.kill()


DEPTH = 100_000


def poisoned(body: object) -> dict[str, bytes]:
    """`body` with every string a lone surrogate, and `body` nested DEPTH lists deep (as the
    value of its first key, or whole), as raw JSON text."""

    def surrogates(value: object) -> object:
        if isinstance(value, str):
            return "\ud800" + value + "\udfff"
        if isinstance(value, dict):
            return {k: surrogates(v) for k, v in value.items()}
        if isinstance(value, list):
            return [surrogates(v) for v in value]
        return value

    deep = "[" * DEPTH + "1" + "]" * DEPTH
    if isinstance(body, dict) and body:
        first, *rest = body
        nested = json.dumps({k: body[k] for k in rest})[1:-1]
        nested = f"{{{json.dumps(first)}: {deep}{', ' + nested if nested else ''}}}"
    else:
        nested = deep
    return {
        "surrogates": json.dumps(surrogates(body)).encode(),
        "deep nesting": nested.encode(),
    }


def fuzz(bridge: tuple, examples: int) -> dict[str, str]:
    """Run every operation's generated cases; returns the failures by operation."""
    url, document, key = bridge
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {key}"}
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:
            response = case.call(base_url=url, headers=headers, timeout=30)
            case.validate_response(response, checks=CHECKS)
            if case.media_type == "application/json" and isinstance(case.body, dict | list):
                # What generated JSON never holds: lone UTF-16 surrogates in its strings, and
                # nesting deeper than any parser's recursion limit.
                for name, raw in poisoned(case.body).items():
                    sent = httpx.request(
                        case.method,
                        f"{url}{case.formatted_path}",
                        params=case.query,
                        content=raw,
                        headers={**headers, "Content-Type": "application/json"},
                        timeout=30,
                    )
                    assert sent.status_code < 500, f"{name}: {sent.status_code} {sent.text[:300]}"

        try:
            run()
        except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - reported together
            failures[operation.label] = str(error)[:600]
    return failures


def test_generated_requests_never_get_a_5xx_or_an_off_schema_response(bridge: tuple) -> None:
    failures = fuzz(bridge, examples=6)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_hundreds_of_generated_requests_per_operation(bridge: tuple) -> None:
    started = time.monotonic()
    failures = fuzz(bridge, examples=200)
    took = time.monotonic() - started
    print(f"\nFIGURE schemathesis: 200 examples x {len(bridge[1]['paths'])} paths in {took:.0f} s")
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
