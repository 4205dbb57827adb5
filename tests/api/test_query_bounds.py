"""Every integer parameter of every API route is bounded: out of range is a 422, never a 500."""

from __future__ import annotations

import re

import pytest

from api.params import MAX_QUERY_INT
from tests.api.conftest import auth
from tests.api.test_submissions import upload

# Out of range: beyond any database integer (the OverflowError of old), one past the bound,
# below zero, and not a number at all.
OUT_OF_RANGE = ["99999999999999999999", str(MAX_QUERY_INT + 1), "-1", "1e3"]


def integer_parameters(spec: dict) -> list[tuple[str, str, dict]]:
    """(method, path, parameter) for every integer parameter the OpenAPI document lists."""
    found = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                kinds = [schema.get("type"), *(s.get("type") for s in schema.get("anyOf", []))]
                if "integer" in kinds:
                    found.append((method, path, parameter))
    return found


@pytest.fixture
async def routes(client, token) -> list[tuple[str, str, dict, str]]:
    """Each integer parameter with a URL naming things that exist (a submission, a task, an
    inspection); an integer path parameter stays a `{name}` placeholder, filled per request."""
    submission_id = (await upload(client, token)).json()["id"]
    inspection = await client.post(
        "/api/v1/inspections", json={"base": "python:3.11"}, headers=auth(token)
    )
    inspection_id = inspection.json()["inspection_id"]
    spec = (await client.get("/openapi.json")).json()
    filled = []
    for method, path, parameter in integer_parameters(spec):
        url = (
            path.replace("{submission_id}", submission_id)
            .replace("{slug}", "toy")
            .replace("{inspection_id}", inspection_id)
        )
        left = set(re.findall(r"{(\w+)}", url))
        assert left <= {parameter["name"]}, f"fill in the path parameters of {path}"
        filled.append((method, path, parameter, url))
    return filled


# A valid body for each route with an integer parameter that needs one.
BODIES = {("patch", "/api/v1/tokens/{token_id}"): {"name": "bounded"}}


async def send(client, token, method: str, url: str, parameter: dict, value: str, path: str = ""):
    """The request with `value` for the parameter, in the path or the query as it is."""
    name = parameter["name"]
    body = BODIES.get((method, path))
    if parameter["in"] == "path":
        return await client.request(
            method, url.replace(f"{{{name}}}", value), headers=auth(token), json=body
        )
    return await client.request(method, url, params={name: value}, headers=auth(token), json=body)


async def test_every_integer_parameter_has_bounds(routes) -> None:
    named = {(path, parameter["name"]) for _, path, parameter, _ in routes}
    assert {
        ("/api/v1/submissions", "limit"),
        ("/api/v1/submissions", "offset"),
        ("/api/v1/submissions/{submission_id}/events", "after"),
        ("/api/v1/submissions/{submission_id}/logs", "offset"),
    } <= named
    for _, path, parameter, _ in routes:
        schema = parameter["schema"]
        assert schema.get("minimum") is not None and schema.get("maximum") is not None, (
            path,
            parameter["name"],
        )
        assert schema["maximum"] <= MAX_QUERY_INT


async def test_out_of_range_integers_are_a_422_in_the_error_shape(client, token, routes) -> None:
    for method, path, parameter, url in routes:
        name = parameter["name"]
        for value in OUT_OF_RANGE:
            response = await send(client, token, method, url, parameter, value, path)
            assert response.status_code == 422, (url, name, value, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_request" and error["field"] == name
            assert error["message"].startswith(f"{name}: ")


async def test_the_largest_allowed_values_reach_every_database(client, token, routes) -> None:
    for method, path, parameter, url in routes:
        largest = str(parameter["schema"]["maximum"])
        response = await send(client, token, method, url, parameter, largest, path)
        # A path's number may name nothing there (a run past the batch): found or not, no 500.
        expected = (200, 404) if parameter["in"] == "path" else (200,)
        assert response.status_code in expected, (url, parameter["name"], response.text)
    listing = await client.get(
        "/api/v1/submissions", params={"offset": MAX_QUERY_INT}, headers=auth(token)
    )
    assert listing.json() == {"submissions": []}


async def test_a_missing_json_body_is_named(client, token) -> None:
    response = await client.post("/api/v1/tokens", headers=auth(token))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "body" and "JSON body" in error["message"]
