"""schemathesis against the REST bridge's own OpenAPI document, with a real key: for every
operation, generated requests (valid and not) never get a 5xx, and every response matches
the schema the document gives for it.

A server of its own with no trainer slots, so generated jobs stay queued and no fuzzed
request starts a trainer.
"""

from __future__ import annotations

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
