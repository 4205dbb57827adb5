"""Streaming multipart uploads: the file part goes to storage chunk by chunk as it arrives.

Form fields must come before the `file` part so the request can be checked (task, limits)
before a byte of the file is stored; the CLI sends them in that order, as do curl and httpx.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from core.errors import TooLarge, WeighbridgeError
from core.storage import Storage, StoredObject

MAX_FIELD_BYTES = 64 * 1024
FILE_FIELD = "file"
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    """The file's base name reduced to safe characters (never empty, never a path)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = SAFE_NAME.sub("_", base).strip("._") or "upload"
    return cleaned[:200]


@dataclass
class Upload:
    fields: dict[str, str]
    filename: str
    stored: StoredObject


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _Reader:
    """Drives python-multipart over the request stream and hands out events in order."""

    def __init__(self, request: Request, boundary: bytes) -> None:
        self.stream = request.stream()
        self.events: list[tuple] = []
        self.header_field = b""
        self.header_value = b""
        self.part_headers: dict[str, str] = {}
        self.done = False
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_part_end": lambda: self.events.append(("end",)),
                "on_header_field": self._hfield,
                "on_header_value": self._hvalue,
                "on_header_end": self._hend,
                "on_headers_finished": lambda: self.events.append(("headers", self.part_headers)),
                "on_end": lambda: self.events.append(("eof",)),
            },
        )

    def _begin(self) -> None:
        self.part_headers = {}

    def _hfield(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _hvalue(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _hend(self) -> None:
        self.part_headers[self.header_field.decode("latin-1").lower()] = self.header_value.decode(
            "latin-1"
        )
        self.header_field = b""
        self.header_value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", bytes(data[start:end])))

    async def next(self) -> tuple:
        while not self.events:
            if self.done:
                return ("eof",)
            try:
                chunk = await self.stream.__anext__()
            except StopAsyncIteration:
                self.done = True
                self.parser.finalize()
                continue
            except ClientDisconnect:
                raise WeighbridgeError(
                    "the upload was interrupted before it finished", field=FILE_FIELD
                ) from None
            if chunk:
                try:
                    self.parser.write(chunk)
                except Exception as exc:
                    raise WeighbridgeError(
                        f"malformed multipart body: {exc}", code="bad_multipart"
                    ) from None
        return self.events.pop(0)


def _boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or b"boundary" not in params:
        raise WeighbridgeError(
            "send the bundle as multipart/form-data with the form fields first and the file "
            f"in the field {FILE_FIELD!r}",
            status=415,
            code="unsupported_media_type",
        )
    return params[b"boundary"]


async def receive_upload(
    request: Request,
    storage: Storage,
    *,
    key_for: Callable[[dict[str, str], str], Awaitable[tuple[str, int]]],
) -> Upload:
    """Parse the multipart request, streaming the file part into storage.

    `key_for(fields, filename)` is called when the file part starts, with the fields sent
    so far; it checks them and returns the storage key and the byte limit.
    """
    _fields, upload = await receive_form(request, storage, key_for=key_for)
    if upload is None:
        raise WeighbridgeError(
            f"the request has no file: send the bundle in the form field {FILE_FIELD!r}",
            status=422,
            code="missing_file",
            field=FILE_FIELD,
        )
    return upload


async def receive_form(
    request: Request,
    storage: Storage,
    *,
    key_for: Callable[[dict[str, str], str], Awaitable[tuple[str, int]]],
) -> tuple[dict[str, str], Upload | None]:
    """The form's fields and its file part (None when it has none), streamed as for
    `receive_upload`; every field, those after the file included."""
    reader = _Reader(request, _boundary(request))
    fields: dict[str, str] = {}
    upload: Upload | None = None
    part: _Part | None = None
    while True:
        event = await reader.next()
        kind = event[0]
        if kind == "eof":
            break
        if kind == "headers":
            part = _describe(event[1])
            if part.filename is None:
                continue
            if part.name != FILE_FIELD:
                raise WeighbridgeError(
                    f"unexpected file field {part.name!r}: send the bundle in the field "
                    f"{FILE_FIELD!r}",
                    status=422,
                    code="wrong_field",
                    field=part.name,
                )
            if upload is not None:
                raise WeighbridgeError("send one file per submission", status=422, field=FILE_FIELD)
            filename = safe_filename(part.filename)
            key, limit = await key_for(dict(fields), filename)
            stored = await storage.write_stream(key, _file_data(reader), max_bytes=limit)
            upload = Upload(fields=fields, filename=filename, stored=stored)
            part = None
        elif kind == "data" and part is not None:
            part.data += event[1]
            if len(part.data) > MAX_FIELD_BYTES:
                raise WeighbridgeError(
                    f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes",
                    status=422,
                    field=part.name,
                )
        elif kind == "end" and part is not None:
            fields[part.name] = part.data.decode("utf-8", errors="replace")
            part = None
    if upload is not None:
        upload.fields = fields
    return fields, upload


async def _file_data(reader: _Reader) -> AsyncIterator[bytes]:
    while True:
        event = await reader.next()
        if event[0] == "data":
            yield event[1]
        elif event[0] == "end":
            return
        elif event[0] == "eof":
            raise WeighbridgeError("the upload ended in the middle of the file", field=FILE_FIELD)


def _describe(headers: dict[str, str]) -> _Part:
    disposition = headers.get("content-disposition", "")
    _, params = parse_options_header(disposition)
    name = params.get(b"name", b"").decode("utf-8", errors="replace")
    filename = params.get(b"filename")
    return _Part(
        headers=headers,
        name=name,
        filename=filename.decode("utf-8", errors="replace") if filename is not None else None,
    )


def check_declared_length(request: Request, limit: int) -> None:
    """Refuse at once a request whose Content-Length is already over the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + MAX_FIELD_BYTES * 4:
        raise TooLarge(
            f"the upload is {int(declared)} bytes; the limit is {limit} bytes", field=FILE_FIELD
        )
