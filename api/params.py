"""Query and path parameter types the routes share: every integer one is bounded.

An unbounded integer reaches the database (or Python's C code) and overflows there: a 500
for what is the caller's mistake. Out-of-range values are a 422 in the error shape instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

# The largest value of a 32-bit signed integer: fits every backend's INTEGER column and is
# far beyond any real offset, page or event id a client needs to send.
MAX_QUERY_INT = 2**31 - 1

Offset = Annotated[int, Query(ge=0, le=MAX_QUERY_INT, description="Items (or bytes) to skip.")]
PageSize = Annotated[int, Query(ge=1, le=200, description="At most this many items.")]
AfterId = Annotated[int, Query(ge=0, le=MAX_QUERY_INT, description="Only the items after this id.")]
Item = Annotated[
    int, Path(ge=0, le=MAX_QUERY_INT, description="The run's number in the batch, from 0.")
]
TokenId = Annotated[int, Path(ge=1, le=MAX_QUERY_INT, description="The token's id.")]
