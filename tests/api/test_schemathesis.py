"""Property-based fuzzing of the whole API from its own OpenAPI schema (authenticated, bounded).

No operation may answer 5xx, and every answer must match the schema (status code documented, body
and content type as declared). Path ids point at a bot that exists so the fuzzing reaches past 404.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import API_TOKEN, api_settings
from tests.api.stack import threaded_stack

# Fuzzes the API served by uvicorn with its worker, in a thread: a system test.
pytestmark = pytest.mark.system

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FUZZ_BOT = "fuzz"
EXAMPLES_PER_OPERATION = 12
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture
def api_url(database_url: str, dev_server_env: object, task_queue: str) -> Iterator[str]:
    address = dev_server_env.client.service_client.config.target_host  # type: ignore[attr-defined]
    stack_settings = api_settings(
        task_queue,
        DATABASE_URL=database_url,
        TEMPORAL_ADDRESS=address,
        # Connecting accounts configured, as in a deployment (X itself is never reached: no state is valid).
        X_CLIENT_ID="fuzz-client",
        X_REDIRECT_URI="http://127.0.0.1/oauth/x/callback",
    )
    with threaded_stack(stack_settings) as url:
        yield url


def _ensure_fuzz_bot(base_url: str) -> int:
    """A bot with a task for the path ids (re-created after a fuzzed DELETE); returns the task id."""
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as http:
        if http.get(f"/bots/{FUZZ_BOT}").status_code == 404:
            http.post("/bots", json={"id": FUZZ_BOT, "name": "Fuzz"}).raise_for_status()
        tasks = http.get(f"/bots/{FUZZ_BOT}/tasks").json()
        if tasks:
            return int(tasks[0]["id"])
        created = http.post(f"/bots/{FUZZ_BOT}/tasks", json={"task_type": "noop", "interval_minutes": 60})
        created.raise_for_status()
        return int(created.json()["id"])


def test_no_server_errors_and_responses_match_the_schema(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 20
    failures: list[str] = []
    calls: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            parameters = case.path_parameters
            if parameters and "botId" in parameters:
                task_id = _ensure_fuzz_bot(api_url)
                parameters["botId"] = FUZZ_BOT
                # Half the task ids point at a real definition, so the fuzzing gets past 404.
                if isinstance(parameters.get("taskId"), int) and parameters["taskId"] % 2 == 0:
                    parameters["taskId"] = task_id
            calls[case.operation.label] = calls.get(case.operation.label, 0) + 1
            response = case.call_and_validate(base_url=api_url, headers=AUTH, checks=CHECKS, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            exercise()
        except (Exception, BaseExceptionGroup) as error:  # collect every operation's failure
            failures.append(f"{operation.label}: {error}")
    assert not failures, "\n\n".join(failures)
    assert set(calls) == {operation.label for operation in operations}  # every operation was exercised
    assert any(200 <= status < 300 for status in statuses)  # and not only refused
    print("schemathesis:", sum(calls.values()), "calls; statuses", dict(sorted(statuses.items())))
