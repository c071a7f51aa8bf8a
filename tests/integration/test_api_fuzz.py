"""Property-based fuzzing of the whole HTTP API from its own OpenAPI spec (schemathesis).

Why: a server error (5xx) on any input is a bug -- a refusal must be a 4xx that says
what is wrong, and the only 5xx by design is 503 ``incomplete_data``, which this
complete home must never produce. Schemathesis generates valid and invalid requests
for every operation of ``/openapi.json`` (ingest, views, SQL, the dashboard's
questions, metrics, health) and runs them in process through the ASGI app.

Checks: no 5xx anywhere; the read API's answers also conform to the spec (documented
status codes, content types, bodies).
The token has read and write scopes so that every operation is reached past its auth;
``test_serving_api.py`` covers the 401/403 answers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from loglambda.core.config import Settings
from loglambda.serving.app import create_app
from loglambda.serving.auth import TokenStore
from tests.served_home import build_served_home

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token-rw"
# Per operation and mode (~12 operations × 2); raise it for a deeper run.
EXAMPLES = int(os.environ.get("LOGLAMBDA_FUZZ_EXAMPLES", "30"))
NO_5XX = [schemathesis.checks.not_a_server_error]
# The read API documents every answer it gives, so it is also held to its spec; ingest
# and /healthz document only their 200s (spec conformance there is their owners' call).
CONFORMS = [*NO_5XX, status_code_conformance, content_type_conformance, response_schema_conformance]
DOCUMENTED = ("/v1/views", "/v1/query", "/v1/dashboard/", "/metrics")


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home: Path = tmp_path_factory.mktemp("fuzz") / "home"
    log = build_served_home(home)
    app = create_app(
        Settings.load(home), tokens=TokenStore.parse(f"{TOKEN}:read+write"), event_log=log
    )
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _fuzz(operation: Any, mode: GenerationMode, checks: list[Any]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks)

    run()


# schemathesis's pytest plugin (``schemathesis.pytest.from_fixture``) breaks on pytest 9
# (it reads ``request.node._nodeid``), so each operation gets its own Hypothesis run here.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_answers_match_the_spec(api_schema: Any, mode: GenerationMode) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12  # ingest, health, views, query, dashboard, metrics
    for operation in operations:
        checks = CONFORMS if operation.path.startswith(DOCUMENTED) else NO_5XX
        try:
            _fuzz(operation, mode, checks)
        except Unsatisfiable:
            # No invalid request exists for it (no parameters, or a body of any bytes).
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as err:  # schemathesis' FailureGroup is the latter
            failures.append(f"{operation.label}: {err}")
    assert not failures, "\n\n".join(failures)
