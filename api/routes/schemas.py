"""Published JSON Schemas: the benchmark descriptor's, for editors and other tools."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from core.descriptor import descriptor_schema_bytes

router = APIRouter(prefix="/api/v1/schemas", tags=["schemas"])


@router.get("/descriptor.json")
async def read_descriptor_schema() -> Response:
    # The shipped document byte for byte: it is the schema descriptors are validated with.
    return Response(descriptor_schema_bytes(), media_type="application/schema+json")
