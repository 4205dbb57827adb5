"""Streaming a data source to a local file: http(s) with retries, s3:// through a storage
object for the bucket, file:// under allowed folders; hashed as it goes, progress throttled.

The caller (core/fetcher.py) decides what to fetch and when; this module only moves bytes,
never holding a whole file in memory, and says clearly why it could not.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import httpx

from core.datasets import DatasetError
from core.errors import RetryableError
from core.queue import backoff
from core.storage import Storage

if TYPE_CHECKING:
    from core.fetcher import FetchPolicy, SourceSpec

log = logging.getLogger(__name__)

CHUNK = 1 << 20

Progress = Callable[[int, int | None], Awaitable[None] | None]
# Given an s3:// source's bucket, a storage object reading that bucket (None: not available).
BucketResolver = Callable[[str], Storage | None]


class FetchError(DatasetError):
    """A data source could not be fetched; the message names the source and says why."""

    def __init__(self, src: str, reason: str) -> None:
        super().__init__(f"data source {src}: {reason}")
        self.src = src
        self.reason = reason


class Transient(Exception):
    """A fault worth another attempt (a 5xx answer, a connect or read timeout)."""


async def download_to(
    path: Path,
    source: SourceSpec,
    policy: FetchPolicy,
    *,
    progress: Progress | None = None,
    buckets: BucketResolver | None = None,
) -> Sink:
    """Stream the source into `path`; the returned sink has its size and digests (md5,
    sha256 and every algorithm the source pins)."""
    sink = Sink(path, source, policy, progress)
    try:
        scheme = urlparse(source.src).scheme
        if scheme in ("http", "https"):
            await with_retries(source, policy, lambda: _get_http(source, sink, policy))
        elif scheme == "s3":
            bucket = _bucket_storage(source, buckets)
            await with_retries(source, policy, lambda: _get_s3(source, sink, bucket))
        else:
            await _get_file(source, sink, policy)
    finally:
        await asyncio.to_thread(sink.close)
    return sink


@dataclass
class Sink:
    """The temporary file a download streams into, with its running digests and progress.

    Each attempt starts it again from nothing (`reset`): no attempt resumes another's bytes.
    """

    path: Path
    source: SourceSpec
    policy: FetchPolicy
    progress: Progress | None
    size: int = 0
    total: int | None = None
    _fh: IO[bytes] | None = None
    _hashes: dict[str, Any] = field(default_factory=dict)
    _reported: float | None = None

    async def reset(self, total: int | None) -> None:
        def _open() -> IO[bytes]:
            if self._fh is not None:
                self._fh.close()
            return open(self.path, "wb")  # closed by `close` or the next reset

        self._fh = await asyncio.to_thread(_open)
        algorithms = {"md5", "sha256", *self.source.checksums()}
        self._hashes = {alg: hashlib.new(alg) for alg in algorithms}
        self.size = 0
        self.total = total
        self._reported = None

    async def write(self, chunk: bytes) -> None:
        assert self._fh is not None, "reset the sink before writing"
        self.size += len(chunk)
        limit = self.policy.max_bytes
        if limit is not None and self.size > limit:
            raise FetchError(
                self.source.src,
                f"larger than the limit of {limit} bytes for a data source; "
                "ask an operator to raise it, or use a smaller file",
            )
        fh, hashes = self._fh, list(self._hashes.values())

        def _write() -> None:
            # Hashing beside the write keeps the event loop free for the lease renewals.
            for h in hashes:
                h.update(chunk)
            fh.write(chunk)

        await asyncio.to_thread(_write)
        await self.report(final=False)

    async def report(self, *, final: bool) -> None:
        """Tell the progress callback, at most once per `progress_seconds` (and at the end)."""
        if self.progress is None:
            return
        now = time.monotonic()
        if (
            not final
            and self._reported is not None
            and now - self._reported < self.policy.progress_seconds
        ):
            return
        self._reported = now
        try:
            answer = self.progress(self.size, self.total)
            if inspect.isawaitable(answer):
                await answer
        except Exception as exc:
            # Progress is for the timeline only: a failed update must not fail the download.
            log.warning("%s: the progress callback failed: %s", self.source.src, exc)

    def digests(self) -> dict[str, str]:
        return {alg: h.hexdigest() for alg, h in self._hashes.items()}

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


async def with_retries(
    source: SourceSpec, policy: FetchPolicy, attempt: Callable[[], Awaitable[None]]
) -> None:
    """Run `attempt` until it succeeds or raises a lasting error; passing faults (Transient)
    are retried after a jittered exponential backoff, `policy.attempts` tries in all."""
    for number in range(1, policy.attempts + 1):
        try:
            await attempt()
            return
        except Transient as exc:
            if number == policy.attempts:
                raise FetchError(
                    source.src, f"download failed after {number} attempts; the last: {exc}"
                ) from exc
            delay = backoff(policy.backoff_seconds, number, cap=policy.max_backoff_seconds)
            log.warning(
                "%s: attempt %d of %d failed (%s); again in %.1f s",
                source.src,
                number,
                policy.attempts,
                exc,
                delay,
            )
            await asyncio.sleep(delay)


async def check_public_host(src: str, url: httpx.URL, policy: FetchPolicy) -> None:
    """Refuse a request to a host that resolves to a non-public address (the server's own
    network, its metadata service), unless the operator allowed that host by name.

    Checked before the first request and again before each redirect. (A name that resolves
    differently between this check and the connection is not caught here.)"""
    host = (url.host or "").lower().strip("[]")
    if host in {h.lower() for h in policy.allow_hosts}:
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port)
    except OSError as exc:
        raise Transient(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if not address.is_global:
            raise FetchError(
                src,
                f"{url.host} is at {address}, a non-public address: data sources are fetched "
                "from public servers only (an operator can allow a host of their own with "
                "WEIGHBRIDGE_DATA_ALLOW_HOSTS)",
            )


async def _get_http(source: SourceSpec, sink: Sink, policy: FetchPolicy) -> None:
    timeout = httpx.Timeout(
        connect=policy.connect_timeout,
        read=policy.read_timeout,
        write=policy.read_timeout,
        pool=policy.connect_timeout,
    )
    # identity: the bytes checked are the file's as served, never a re-encoding of them.
    headers = {"Accept-Encoding": "identity"}

    async def guard(request: httpx.Request) -> None:
        await check_public_host(source.src, request.url, policy)

    try:
        async with (
            httpx.AsyncClient(
                timeout=timeout, follow_redirects=True, event_hooks={"request": [guard]}
            ) as client,
            client.stream("GET", source.src, headers=headers) as response,
        ):
            status = f"{response.status_code} {response.reason_phrase}".strip()
            if response.status_code >= 500:
                raise Transient(f"GET {response.url} answered {status}")
            if response.status_code >= 400:
                raise FetchError(
                    source.src,
                    f"GET {response.url} answered {status}; not retried (the server refuses "
                    "the request itself): check the URL and that the file is public",
                )
            length = response.headers.get("content-length", "")
            await sink.reset(int(length) if length.isdigit() else None)
            async for chunk in response.aiter_raw(CHUNK):
                await sink.write(chunk)
    except (httpx.ConnectTimeout, httpx.ReadTimeout) as exc:
        what = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "reading"
        raise Transient(f"timed out {what} (GET {source.src})") from exc
    except httpx.HTTPError as exc:
        raise FetchError(source.src, f"GET failed: {type(exc).__name__}: {exc}") from exc
    await sink.report(final=True)


def _bucket_storage(source: SourceSpec, buckets: BucketResolver | None) -> Storage:
    bucket = urlparse(source.src).netloc
    found = buckets(bucket) if buckets is not None else None
    if found is None:
        raise FetchError(
            source.src,
            f"s3:// sources are not available in this deployment (no S3 storage reads bucket "
            f"{bucket!r}); use an https:// URL for the file, or run with S3 storage",
        )
    return found


async def _get_s3(source: SourceSpec, sink: Sink, bucket: Storage) -> None:
    key = unquote(urlparse(source.src).path.lstrip("/"))
    try:
        await sink.reset(await bucket.size(key))
        async for chunk in bucket.read_stream(key, chunk_size=CHUNK):
            await sink.write(chunk)
    except FileNotFoundError:
        raise FetchError(source.src, "no such object in the bucket") from None
    except RetryableError as exc:
        raise Transient(str(exc)) from exc
    await sink.report(final=True)


async def _get_file(source: SourceSpec, sink: Sink, policy: FetchPolicy) -> None:
    parsed = urlparse(source.src)
    if parsed.netloc not in ("", "localhost"):
        raise FetchError(source.src, "a file:// URL names a path on this host: file:///path")
    path = Path(unquote(parsed.path))
    real = await asyncio.to_thread(path.resolve)
    roots = [await asyncio.to_thread(root.resolve) for root in policy.file_roots]
    if not any(real == root or root in real.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none in this deployment"
        raise FetchError(
            source.src,
            f"file:// sources may only read under the allowed folders ({allowed}); "
            "use an http(s):// URL",
        )
    try:
        fh = await asyncio.to_thread(open, real, "rb")
    except OSError as exc:
        raise FetchError(source.src, f"cannot read {path}: {exc.strerror}") from None
    try:
        await sink.reset(await asyncio.to_thread(lambda: real.stat().st_size))
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            await sink.write(chunk)
    finally:
        fh.close()
    await sink.report(final=True)
