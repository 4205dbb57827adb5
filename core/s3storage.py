"""Storage on S3 (`s3://bucket/prefix`), through aioboto3: the same keys as the local folder.

Writes stream: up to one part (8 MiB) is held in memory, larger objects go up as a multipart
upload whose parts are sent as they fill, hashed on the way; a write that fails or runs past
its limit aborts the upload, so a key is either its whole new object or what it was before (a
PUT, or the completion of a multipart upload, replaces an object at once). Reads stream with
ranged GETs. A missing key is FileNotFoundError, as on the folder. `WEIGHBRIDGE_AWS_ENDPOINT_URL`
points it at an S3-compatible server (moto, MinIO, LocalStack) and `WEIGHBRIDGE_AWS_REGION`
names the region; credentials come from the usual AWS chain (environment, profile, role).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any, Literal

from botocore.config import Config
from botocore.exceptions import ClientError

from core.aws import AwsClients
from core.errors import TooLarge, WeighbridgeError
from core.storage import ObjectInfo, StoredObject, check_key

PART_BYTES = 8 << 20  # S3's minimum part is 5 MiB (but for the last one)
MISSING = ("NoSuchKey", "404", "NotFound")


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in MISSING


class S3Storage:
    """A bucket and a key prefix; see the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        if not bucket:
            raise WeighbridgeError(
                "the storage URL names no bucket: use s3://bucket/prefix",
                field="WEIGHBRIDGE_STORAGE_URL",
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        # SigV4 for everything, presigned links included: botocore would sign those with SigV2,
        # which S3 refuses for buckets made since June 2020 (and in newer regions). Checksums
        # only where S3 requires them: the sha256 of every write is ours already, and botocore's
        # own CRC of each part held a further copy of it in memory.
        self._aws = AwsClients(
            endpoint_url=endpoint_url,
            region=region,
            config=Config(
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # -- the client: one per event loop, closed by `close` --------------------------------

    async def _client(self) -> Any:
        return await self._aws.client("s3")

    async def close(self) -> None:
        await self._aws.close()

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, name: str) -> str:
        return name[len(self.prefix) + 1 :] if self.prefix else name

    def _folder(self, prefix: str) -> str:
        """The object-name prefix of a folder-like key prefix (`a/b` lists `a/b/...`)."""
        if not prefix:
            return f"{self.prefix}/" if self.prefix else ""
        return self._name(prefix.rstrip("/")) + "/"

    def local_path(self, key: str) -> Path | None:
        return None

    # -- writes ------------------------------------------------------------------------------

    async def write_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int | None = None
    ) -> StoredObject:
        client = await self._client()
        name = self._name(key)
        digest = hashlib.sha256()
        size = 0
        # The chunks of the part being filled, kept as they came: a part is joined once, at
        # exactly PART_BYTES (the chunk that crosses the line is split), and the chunks are let
        # go before it is sent, so a write holds about one part, not three copies of one.
        pending: list[bytes] = []
        filled = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise TooLarge(
                        f"file is larger than the limit of {max_bytes} bytes", field="file"
                    )
                digest.update(chunk)
                while filled + len(chunk) >= PART_BYTES:
                    need = PART_BYTES - filled
                    pending.append(chunk[:need])
                    chunk = chunk[need:]
                    part = b"".join(pending)
                    pending, filled = [], 0
                    if upload_id is None:
                        started = await client.create_multipart_upload(Bucket=self.bucket, Key=name)
                        upload_id = started["UploadId"]
                    parts.append(await self._part(client, name, upload_id, len(parts) + 1, part))
                    del part
                if chunk:
                    pending.append(chunk)
                    filled += len(chunk)
            rest = b"".join(pending)
            pending = []
            if upload_id is None:
                await client.put_object(Bucket=self.bucket, Key=name, Body=rest)
            else:
                if rest:
                    parts.append(await self._part(client, name, upload_id, len(parts) + 1, rest))
                await client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        client.abort_multipart_upload(
                            Bucket=self.bucket, Key=name, UploadId=upload_id
                        )
                    )
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    async def _part(
        self, client: Any, name: str, upload_id: str, number: int, data: bytes
    ) -> dict[str, Any]:
        answer = await client.upload_part(
            Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=data
        )
        return {"ETag": answer["ETag"], "PartNumber": number}

    async def write_bytes(self, key: str, data: bytes) -> StoredObject:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.write_stream(key, one())

    async def write_file(self, key: str, path: Path) -> StoredObject:
        return await self.write_stream(key, _file_chunks(path))

    # -- reads -------------------------------------------------------------------------------

    async def read_stream(
        self, key: str, *, chunk_size: int = 1 << 20, offset: int = 0
    ) -> AsyncIterator[bytes]:
        client = await self._client()
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=self._name(key), **extra)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # an offset at the end: nothing more to read
            raise
        body = answer["Body"]
        try:
            while chunk := await body.read(chunk_size):
                yield chunk
        finally:
            body.close()

    async def read_bytes(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.read_stream(key)])

    async def download(self, key: str, path: Path) -> Path:
        stream = self.read_stream(key)
        first = await anext(stream, None)  # FileNotFoundError before any file is made
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = await asyncio.to_thread(open, path, "wb")
        try:
            if first is not None:
                await asyncio.to_thread(fh.write, first)
            async for chunk in stream:
                await asyncio.to_thread(fh.write, chunk)
        finally:
            fh.close()
        return path

    async def _head(self, key: str) -> dict[str, Any] | None:
        client = await self._client()
        try:
            head: dict[str, Any] = await client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return head

    async def exists(self, key: str) -> bool:
        return await self._head(key) is not None

    async def size(self, key: str) -> int:
        head = await self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return int(head["ContentLength"])

    async def list_info(self, prefix: str) -> builtins.list[ObjectInfo]:
        client = await self._client()
        folder = self._folder(prefix)
        found = []
        paginator = client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                found.append(
                    ObjectInfo(
                        key=self._key(item["Key"]),
                        size=int(item["Size"]),
                        modified=item["LastModified"],
                    )
                )
        # A key that is itself the prefix (a file, not a folder) is listed as the folder does.
        if prefix and not found and await self.exists(prefix.rstrip("/")):
            head = await self._head(prefix.rstrip("/"))
            assert head is not None
            found.append(
                ObjectInfo(
                    key=prefix.rstrip("/"),
                    size=int(head["ContentLength"]),
                    modified=head["LastModified"],
                )
            )
        return sorted(found, key=lambda o: o.key)

    async def list(self, prefix: str) -> builtins.list[str]:
        return [info.key for info in await self.list_info(prefix)]

    # -- deletes and moves --------------------------------------------------------------------

    async def delete_prefix(self, prefix: str) -> int:
        check_key(prefix.rstrip("/"))  # never the whole store
        client = await self._client()
        keys = await self.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            await client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": self._name(k)} for k in batch], "Quiet": True},
            )
        return len(keys)

    async def move(self, src: str, dst: str) -> None:
        client = await self._client()
        if not await self.exists(src):
            raise FileNotFoundError(src)
        # The managed copy: a multipart copy past 5 GiB, where one CopyObject cannot go.
        await client.copy(
            {"Bucket": self.bucket, "Key": self._name(src)}, self.bucket, self._name(dst)
        )
        await client.delete_object(Bucket=self.bucket, Key=self._name(src))

    async def presigned_url(
        self, key: str, *, method: Literal["GET", "PUT"] = "GET", seconds: int = 900
    ) -> str:
        """A link that downloads (GET) or uploads (PUT, the whole object in one request) `key`
        without credentials until it expires (owners' logs, remote workers)."""
        if method not in ("GET", "PUT"):
            raise WeighbridgeError(
                f"a presigned link is for GET or PUT, not {method!r}", field="method"
            )
        client = await self._client()
        url: str = await client.generate_presigned_url(
            "get_object" if method == "GET" else "put_object",
            Params={"Bucket": self.bucket, "Key": self._name(key)},
            ExpiresIn=seconds,
        )
        return url


async def _file_chunks(path: Path, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, chunk_size):
            yield chunk
    finally:
        fh.close()
