"""A multipart/form-data body streamed from a file, with its length known before it is sent.

The form fields come first and the file last, as the API requires, so the server can check
the task and the limits before it stores a byte. The file is read chunk by chunk; nothing
holds it whole in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cli.errors import CliError

CHUNK_BYTES = 1024 * 1024
CRLF = b"\r\n"


def quote_header_value(value: str) -> bytes:
    # What browsers (and the HTML spec) do: percent-escape the three characters that would
    # break the quoted string, and send the rest as UTF-8.
    escaped = value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    return escaped.encode("utf-8")


class MultipartBody:
    """Iterate it for the body's bytes; `content_type` and `length` go in the headers."""

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        *,
        path: Path,
        filename: str | None = None,
        file_field: str = "file",
        file_content_type: str = "application/octet-stream",
        chunk_bytes: int = CHUNK_BYTES,
        boundary: str | None = None,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.file_size = self.path.stat().st_size
        self.chunk_bytes = chunk_bytes
        self.on_chunk = on_chunk
        self.boundary = boundary or "weighbridge-" + secrets.token_hex(16)
        marker = b"--" + self.boundary.encode("ascii")
        head = bytearray()
        for name, value in fields:
            head += marker + CRLF
            head += b'Content-Disposition: form-data; name="' + quote_header_value(name) + b'"'
            head += CRLF + CRLF + value.encode("utf-8") + CRLF
        head += marker + CRLF
        head += (
            b'Content-Disposition: form-data; name="'
            + quote_header_value(file_field)
            + b'"; filename="'
            + quote_header_value(filename or self.path.name)
            + b'"'
            + CRLF
        )
        head += b"Content-Type: " + file_content_type.encode("ascii") + CRLF + CRLF
        self.head = bytes(head)
        self.tail = CRLF + marker + b"--" + CRLF

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int:
        return len(self.head) + self.file_size + len(self.tail)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(self.length)}

    def __iter__(self) -> Iterator[bytes]:
        yield self._sent(self.head)
        remaining = self.file_size
        with open(self.path, "rb") as handle:
            while remaining > 0:
                chunk = handle.read(min(self.chunk_bytes, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield self._sent(chunk)
            # The length was promised up front: a file that changed size breaks the request.
            if remaining or handle.read(1):
                raise CliError(f"{self.path} changed while it was being uploaded; try again")
        yield self._sent(self.tail)

    def _sent(self, chunk: bytes) -> bytes:
        if self.on_chunk is not None:
            self.on_chunk(len(chunk))
        return chunk
