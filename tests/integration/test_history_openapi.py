"""The served OpenAPI document against the implementation: schemathesis generates requests
for every operation and checks each response (status documented, body matching its schema,
never a 5xx) against a real seeded SQLite database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
import schemathesis.checks
from hypothesis import HealthCheck, settings
from openapi_schema_validator import OAS30Validator

from monitor.api.openapi import document
from tests.integration.test_history_api import TOKEN, Api, running, seed

SCHEMA = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("openapi")
    with running(f"sqlite:///{folder}/monitor.db") as api:
        seed(api.engine)
        yield api


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_matches_the_document(case: schemathesis.Case, served: Api) -> None:
    # Not checked: that every schema-valid request is accepted. A string can be schema-valid
    # and still not a time or a cursor; the API answers 400 naming it, as documented.
    case.call_and_validate(
        base_url=served.base,
        headers={"Authorization": f"Bearer {TOKEN}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )


def test_the_served_document_is_the_one_checked(served: Api) -> None:
    assert served.ok("/api/v1/openapi.json") == document()


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/api/v1/conferences?limit=3", "ConferencePage"),
        ("/api/v1/events?limit=50", "EventPage"),
        ("/api/v1/deliveries", "DeliveryPage"),
        ("/api/v1/summary?since=2026-11-19T00:00:00Z", "Summary"),
        ("/api/v1/conferences/CF00000000000000000000000000000000", "ConferenceDetail"),
        ("/api/v1/conferences/CF00000000000000000000000000000032", "ConferenceDetail"),
    ],
)
def test_real_history_validates_against_the_component_schemas(
    served: Api, path: str, schema: str
) -> None:
    """Schemathesis mostly finds empty pages; these are full ones, every field filled."""
    doc = document()
    wrapper = {"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}
    path, _, query = path.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    body = served.ok(path, **params)
    assert body.get("items", [body]), "the seeded history must fill the page"
    OAS30Validator(wrapper).validate(body)
