"""The descriptor's JSON Schema is served as shipped, and it is the schema that validates."""

from __future__ import annotations

import tomllib

import jsonschema

from core.descriptor import descriptor_schema, parse_descriptor
from tests.core.test_descriptor import HELLO_WORLD, without


async def test_the_descriptor_schema_is_served(client):
    response = await client.get("/api/v1/schemas/descriptor.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/schema+json")
    served = response.json()
    assert served == descriptor_schema()
    # A tool holding only the served document refuses what the service refuses.
    validator = jsonschema.Draft202012Validator(served)
    assert parse_descriptor(HELLO_WORLD) and validator.is_valid(tomllib.loads(HELLO_WORLD))
    no_image = tomllib.loads(without(HELLO_WORLD, "docker_image"))
    assert [[*e.absolute_path, e.validator] for e in validator.iter_errors(no_image)] == [
        ["env", "required"]
    ]


async def test_the_schema_route_is_in_the_openapi_document(client):
    spec = (await client.get("/openapi.json")).json()
    assert "/api/v1/schemas/descriptor.json" in spec["paths"]
