"""Property-based fuzzing of every operation of the gateway's own API, from the OpenAPI
document the running gateway serves (schemathesis): valid and invalid requests alike must
never get a 5xx, and every answer must match the document (status, content type, body).

A gateway of its own (its own database): the fuzzer grants, denies, locks and rolls back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.openapi import OPENAPI_PATH, OPERATIONS, document
from tests.conftest import Gateway, Proc, dedicated_gateway


@schemathesis.check
def invalid_input_is_refused(ctx: Any, response: Any, case: Any) -> bool | None:
    """negative_data_rejection, counting the server's own 414/431 (a request line or
    headers over its limits, refused before the gateway's checks) as refusals too."""
    if response.status_code in (414, 431):
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    invalid_input_is_refused,
]
EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed_gateway(
    tmp_path_factory: pytest.TempPathFactory, idp: Proc, opaque_idp: Proc, upstream: Proc
) -> Iterator[Gateway]:
    with dedicated_gateway(tmp_path_factory, idp, opaque_idp, upstream, "fuzz") as gateway:
        yield gateway


# The document the gateway serves (test_served_document_is_the_one_fuzzed checks it is).
schema = schemathesis.openapi.from_dict(document())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation_answers_as_documented(case: Any, fuzzed_gateway: Gateway) -> None:
    operation = case.operation.definition.raw.get("operationId")
    role = next(op.role for op in OPERATIONS if op.operation_id == operation)
    # The lab IdP's ann is an admin, audrey an auditor (roles from a trusted issuer).
    who = {"admin": "ann", "auditor": "audrey"}.get(role or "")
    headers = {"Authorization": f"Bearer {fuzzed_gateway.token(who)}"} if who else {}
    case.call_and_validate(base_url=fuzzed_gateway.url, headers=headers, checks=CHECKS)


def test_served_document_is_the_one_fuzzed(fuzzed_gateway: Gateway) -> None:
    served = requests.get(fuzzed_gateway.url + OPENAPI_PATH, timeout=10).json()
    assert served == document()
    fuzzed = {result.ok().definition.raw["operationId"] for result in schema.get_all_operations()}
    assert fuzzed == {op.operation_id for op in OPERATIONS}
    ids = {op["operationId"] for path in served["paths"].values() for op in path.values()}
    assert ids == {op.operation_id for op in OPERATIONS}
    assert len(ids) >= 25


def test_document_passes_a_maintained_validator(fuzzed_gateway: Gateway) -> None:
    from openapi_spec_validator import validate

    served = requests.get(fuzzed_gateway.url + OPENAPI_PATH, timeout=10).json()
    validate(served)  # raises on an invalid document


def test_doc_is_checked_file_free(tmp_path: Path) -> None:
    # A broken document is caught by the same validator (the check can fail).
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    from gateway.api.openapi import document

    broken = {**document(), "paths": {"/x": {"get": {"responses": {"200": {}}}}}}
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_the_servers_own_refusals_are_json_too(fuzzed_gateway: Gateway) -> None:
    # gunicorn refuses a request line over its limit before the app sees it.
    long_line = requests.get(fuzzed_gateway.url + "/_gateway/health?x=" + "a" * 6000, timeout=10)
    assert long_line.status_code == 414
    assert long_line.headers["Content-Type"] == "application/json"
    assert long_line.json()["error"] == "uri_too_long"
    headers = {f"X-Filler-{i}": "b" * 100 for i in range(120)}
    many = requests.get(fuzzed_gateway.url + "/_gateway/health", headers=headers, timeout=10)
    assert many.status_code == 431 and many.json()["error"] == "headers_too_large"
