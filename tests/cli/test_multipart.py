"""The streamed multipart body: what a multipart parser reads back, and its declared length."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from python_multipart.multipart import MultipartParser, parse_options_header

from cli.errors import CliError
from cli.multipart import MultipartBody

FIELDS = [("task", "toy"), ("name", "my model"), ("kind", "model"), ("private", "false")]


def parse(body: bytes, content_type: str) -> list[dict]:
    """Parts in the order they came, each {headers, name, filename, data}."""
    _, params = parse_options_header(content_type)
    parts: list[dict] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def begin() -> None:
        parts.append({"headers": {}, "data": b""})

    def header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def header_end() -> None:
        parts[-1]["headers"][header["field"].decode().lower()] = header["value"].decode()
        header["field"] = header["value"] = b""

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += chunk[start:end]

    parser = MultipartParser(
        params[b"boundary"],
        callbacks={
            "on_part_begin": begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_part_data": data,
        },
    )
    parser.write(body)
    parser.finalize()
    for part in parts:
        _, disposition = parse_options_header(part["headers"]["content-disposition"])
        part["name"] = disposition[b"name"].decode()
        filename = disposition.get(b"filename")
        part["filename"] = filename.decode() if filename is not None else None
    return parts


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    path = tmp_path / "model.tar.gz"
    # Bytes that look like boundaries and CRLFs must come back untouched.
    path.write_bytes(os.urandom(300_000) + b"\r\n--weighbridge-x\r\n" + os.urandom(1000))
    return path


def test_parser_reads_fields_first_then_the_file(payload: Path) -> None:
    body = MultipartBody(FIELDS, path=payload, chunk_bytes=64 * 1024)
    data = b"".join(body)

    assert len(data) == body.length == int(body.headers()["Content-Length"])
    parts = parse(data, body.content_type)
    assert [(p["name"], p["data"].decode()) for p in parts[:-1]] == FIELDS
    file_part = parts[-1]
    assert file_part["name"] == "file"
    assert file_part["filename"] == "model.tar.gz"
    assert file_part["headers"]["content-type"] == "application/octet-stream"
    assert file_part["data"] == payload.read_bytes()


def test_file_is_streamed_in_chunks_and_progress_counts_every_byte(payload: Path) -> None:
    seen: list[int] = []
    body = MultipartBody(FIELDS, path=payload, chunk_bytes=64 * 1024, on_chunk=seen.append)
    chunks = list(body)

    # Never the whole file in one piece: head, the file in 64 KiB reads, tail.
    assert max(len(c) for c in chunks) <= 64 * 1024
    assert len(chunks) == 2 + -(-payload.stat().st_size // (64 * 1024))
    assert sum(seen) == body.length


def test_quotes_and_newlines_in_names_cannot_break_the_headers(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    body = MultipartBody([("name", 'a "quoted"\r\nname')], path=path, filename='evil"\r\n.zip')
    parts = parse(b"".join(body), body.content_type)

    assert [p["name"] for p in parts] == ["name", "file"]
    assert parts[0]["data"] == b'a "quoted"\r\nname'
    assert parts[1]["filename"] == "evil%22%0D%0A.zip"
    assert parts[1]["data"] == path.read_bytes()


def test_a_file_that_grows_during_the_upload_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.tar.gz"
    path.write_bytes(b"x" * 1000)
    body = MultipartBody(FIELDS, path=path, chunk_bytes=100)
    chunks = iter(body)
    next(chunks)
    with path.open("ab") as handle:
        handle.write(b"more")
    with pytest.raises(CliError, match="changed while"):
        list(chunks)
