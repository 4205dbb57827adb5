"""Datasets: generators, preparation into storage under their checksum, verified reading.

A task config names a dataset's source: `generator:<name>` (rows made by a registered
generator from `options`, deterministically), a `file://` path, or a storage key. Preparation
writes each dataset once as JSONL under `datasets/<sha256>/<name>.jsonl` and records the key,
checksum and size on the `datasets` row; readers verify the checksum before using a row.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import sqlalchemy as sa
from sqlmodel import col

from core.models import Dataset, Task
from core.storage import Storage
from core.taskconfig import DatasetConfig, TaskConfig

if TYPE_CHECKING:
    from core.context import Services

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
GeneratorFn = Callable[[dict[str, Any]], Rows]

_GENERATORS: dict[str, GeneratorFn] = {}


class DatasetError(Exception):
    """A dataset cannot be prepared or read as configured; the message says which and why."""


class ChecksumMismatch(DatasetError):
    """Stored bytes do not match the checksum they were recorded (or pinned) with."""


# ---------------------------------------------------------------------------------------------
# Generators


def register_generator(name: str) -> Callable[[GeneratorFn], GeneratorFn]:
    """Register `fn(options) -> rows` as the generator `generator:<name>` sources refer to."""

    def decorate(fn: GeneratorFn) -> GeneratorFn:
        if name in _GENERATORS and _GENERATORS[name] is not fn:
            raise ValueError(f"dataset generator {name!r} is already registered")
        _GENERATORS[name] = fn
        return fn

    return decorate


def generator_names() -> list[str]:
    return sorted(_GENERATORS)


def generate_rows(name: str, options: dict[str, Any] | None = None) -> Rows:
    """The rows of `generator:<name>` with `options` (same options, same rows, every time)."""
    try:
        fn = _GENERATORS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset generator {name!r}; registered: {', '.join(generator_names())}"
        ) from None
    return fn(dict(options or {}))


def _options(options: dict[str, Any], defaults: dict[str, Any], generator: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DatasetError(
            f"generator {generator!r}: unknown option(s) {unknown}; "
            f"it takes {', '.join(sorted(defaults))}"
        )
    return {**defaults, **options}


DIGITS_SPLITS = ("examples", "train", "heldout")
# Fixed once: changing them changes every digits file and its pinned checksum.
DIGITS_SPLIT_SEED = 20261124
DIGITS_HELDOUT_FRACTION = 0.25
DIGITS_EXAMPLES_PER_CLASS = 2


@register_generator("digits")
def digits_rows(options: dict[str, Any]) -> Rows:
    """scikit-learn's bundled 8x8 digits (no download): `pixels` (64 floats, 0..16), `label`.

    Options: `split` ("examples": 2 public rows per class taken from the train part;
    "train"; "heldout": a stratified 25% disjoint from train), `noise` (std of gaussian
    pixel noise, clipped to 0..16, rounded to 3 decimals), `seed` (of the noise), `n`
    (keep the first n rows).

    With noise, the rows are the same images as without, in the same order, each a perturbed
    copy of its original: uid `<original uid>-noisy` and `original_uid` naming the original
    (what a robustness delta pairs them by).
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    opts = _options(options, {"split": "heldout", "noise": 0.0, "seed": 0, "n": None}, "digits")
    split = opts["split"]
    if split not in DIGITS_SPLITS:
        raise DatasetError(f"generator 'digits': split must be one of {', '.join(DIGITS_SPLITS)}")
    noise = float(opts["noise"])
    if noise < 0:
        raise DatasetError("generator 'digits': noise must be >= 0")

    digits = load_digits()
    data = digits.data.astype(np.float64)
    target = digits.target.astype(np.int64)
    indices = np.arange(len(target))
    train_idx, heldout_idx = train_test_split(
        indices,
        test_size=DIGITS_HELDOUT_FRACTION,
        stratify=target,
        random_state=DIGITS_SPLIT_SEED,
    )
    if split == "heldout":
        chosen = np.asarray(heldout_idx)
    elif split == "train":
        chosen = np.asarray(train_idx)
    else:
        picked: list[int] = []
        for cls in range(10):
            of_class = [int(i) for i in train_idx if target[i] == cls]
            picked.extend(of_class[:DIGITS_EXAMPLES_PER_CLASS])
        chosen = np.asarray(picked)
    if opts["n"] is not None:
        chosen = chosen[: int(opts["n"])]

    pixels = data[chosen]
    if noise > 0:
        # RandomState's stream is frozen by numpy's compatibility policy (NEP 19).
        rng = np.random.RandomState(int(opts["seed"]))
        pixels = np.clip(pixels + rng.normal(0.0, noise, size=pixels.shape), 0.0, 16.0)
        pixels = np.round(pixels, 3)
    rows: Rows = []
    for i, idx in enumerate(chosen):
        uid = f"digits-{split}-{i:04d}"
        row: dict[str, Any] = (
            {"uid": f"{uid}-noisy", "original_uid": uid} if noise > 0 else {"uid": uid}
        )
        row["pixels"] = [float(v) for v in pixels[i]]
        row["label"] = int(target[idx])
        rows.append(row)
    return rows


@register_generator("toy")
def toy_rows(options: dict[str, Any]) -> Rows:
    """Numbers and their parity, for tests: input `x` (int), `label` = x % 2."""
    import numpy as np

    opts = _options(options, {"n": 20, "seed": 0}, "toy")
    n = int(opts["n"])
    if n < 1:
        raise DatasetError("generator 'toy': n must be >= 1")
    xs = np.random.RandomState(int(opts["seed"])).randint(0, 1000, size=n)
    return [{"uid": f"toy-{i:05d}", "x": int(x), "label": int(x) % 2} for i, x in enumerate(xs)]


# ---------------------------------------------------------------------------------------------
# Encoding, keys, checksums


def encode_rows(rows: Iterable[dict[str, Any]]) -> bytes:
    """JSONL, one compact object per line, keys in the generator's order (deterministic)."""
    return b"".join(
        json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for row in rows
    )


def decode_rows(data: bytes, *, where: str = "dataset") -> Rows:
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: line {number} is not JSON: {exc.msg}") from None
    return rows


def dataset_key(sha256: str, name: str) -> str:
    return f"datasets/{sha256}/{name}.jsonl"


def _check_rows(rows: Rows, config: TaskConfig, dataset: DatasetConfig) -> None:
    where = f"task {config.slug!r}, dataset {dataset.name!r}"
    if not rows:
        raise DatasetError(f"{where}: the source produced no rows")
    # Labels held by the organiser's remote workers are not in the stored rows.
    labels = [config.label_field] if dataset.labels != "worker" else []
    needed = ["uid", *config.input_fields, *labels]
    for row in rows[:1]:
        missing = [f for f in needed if f not in row]
        if missing:
            raise DatasetError(
                f"{where}: rows lack field(s) {missing} (they have {sorted(row)}); "
                "the task's input_fields/label_field must match the dataset"
            )
    if dataset.labels == "worker" and config.label_field in rows[0]:
        raise DatasetError(
            f"{where}: the rows hold the label field {config.label_field!r}, but the dataset's "
            'labels are held by the remote workers (labels = "worker"): remove them from the '
            "source, or set labels to evaluator"
        )
    uids = [r["uid"] for r in rows]
    if len(set(uids)) != len(uids):
        raise DatasetError(f"{where}: uids are not unique")
    linked = sum(1 for r in rows if "original_uid" in r)
    if linked and linked != len(rows):
        raise DatasetError(
            f"{where}: {len(rows) - linked} of {len(rows)} rows lack `original_uid`; "
            "a perturbed dataset links every row to its original, or none (then by equal uid)"
        )


async def read_examples(storage: Storage, key: str, sha256: str) -> Rows:
    """The rows stored at `key`, after checking their bytes hash to `sha256`.

    A mismatch (a tampered or truncated file, or a wrong pointer) raises ChecksumMismatch
    and no row is returned.
    """
    if not sha256:
        raise DatasetError(f"{key}: no checksum recorded; prepare the datasets first")
    try:
        data = await storage.read_bytes(key)
    except FileNotFoundError:
        raise DatasetError(
            f"{key}: not in storage; run dataset preparation (`weighbridge up` does it)"
        ) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ChecksumMismatch(
            f"{key}: checksum mismatch: expected sha256 {sha256}, the stored file has {actual} "
            "(the file was changed or truncated; delete it and prepare the datasets again)"
        )
    return decode_rows(data, where=key)


# ---------------------------------------------------------------------------------------------
# Preparation


@dataclass(frozen=True)
class PreparedDataset:
    """What preparation recorded for one dataset; `written` is False when nothing changed."""

    task: str
    name: str
    key: str
    sha256: str
    n_examples: int
    written: bool
    updated: bool


async def _source_bytes(
    storage: Storage, config: TaskConfig, dataset: DatasetConfig
) -> tuple[bytes, int]:
    """The dataset file's bytes and its number of rows, from whatever the source names."""
    where = f"task {config.slug!r}, dataset {dataset.name!r}"
    source = dataset.source
    if source.startswith("generator:"):
        name = source.removeprefix("generator:")
        try:
            rows = await asyncio.to_thread(generate_rows, name, dataset.options)
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        _check_rows(rows, config, dataset)
        return encode_rows(rows), len(rows)
    parsed = urlparse(source)
    if parsed.scheme == "file":
        path = Path(parsed.netloc + parsed.path)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise DatasetError(f"{where}: cannot read {path}: {exc.strerror}") from None
    elif parsed.scheme:
        raise DatasetError(
            f"{where}: source scheme {parsed.scheme!r} is not supported in this build; "
            "use generator:<name>, file:///path or a storage key"
        )
    else:
        try:
            data = await storage.read_bytes(source)
        except FileNotFoundError:
            raise DatasetError(f"{where}: storage key {source!r} does not exist") from None
    rows = decode_rows(data, where=where)
    _check_rows(rows, config, dataset)
    return data, len(rows)


async def prepare_dataset(
    services: Services, config: TaskConfig, dataset: DatasetConfig
) -> PreparedDataset:
    """Produce one dataset, store it under its checksum (once) and record it on its row."""
    async with services.datasets_lock:
        return await _prepare_dataset(services, config, dataset)


async def _prepare_dataset(
    services: Services, config: TaskConfig, dataset: DatasetConfig
) -> PreparedDataset:
    storage = services.storage
    where = f"task {config.slug!r}, dataset {dataset.name!r}"
    row = await _dataset_row(services, config, dataset)
    pinned = dataset.sha256

    key = sha = ""
    n_examples: int | None = None
    written = False
    already = pinned and row.sha256 == pinned and row.uri and row.n_examples is not None
    if already and await storage.exists(row.uri):
        key, sha, n_examples = row.uri, pinned, row.n_examples
    if not key:
        data, n_examples = await _source_bytes(storage, config, dataset)
        sha = hashlib.sha256(data).hexdigest()
        if pinned and sha != pinned:
            raise ChecksumMismatch(
                f"{where}: the produced file has sha256 {sha} but the config pins {pinned}; "
                "the source changed (or the pin is wrong): check it, then update `sha256` "
                "in the task config"
            )
        key = dataset_key(sha, dataset.name)
        if not await storage.exists(key):
            # Writes are atomic renames of identical bytes: two preparers racing is harmless.
            await storage.write_bytes(key, data)
            written = True

    updated = (row.uri, row.sha256, row.n_examples) != (key, sha, n_examples)
    if updated:
        async with services.db.session() as session:
            await session.execute(
                sa.update(Dataset)
                .where(col(Dataset.id) == row.id)
                .values(uri=key, sha256=sha, n_examples=n_examples)
            )
    if written or updated:
        log.info("prepared %s (%s rows, sha256 %s)", where, n_examples, sha[:12])
    assert n_examples is not None
    return PreparedDataset(
        task=config.slug,
        name=dataset.name,
        key=key,
        sha256=sha,
        n_examples=n_examples,
        written=written,
        updated=updated,
    )


async def _dataset_row(services: Services, config: TaskConfig, dataset: DatasetConfig) -> Dataset:
    async with services.db.session() as session:
        row = await session.scalar(
            sa.select(Dataset)
            .join(Task, col(Task.id) == col(Dataset.task_id))
            .where(col(Task.slug) == config.slug, col(Dataset.name) == dataset.name)
        )
        if row is None:
            from core.tasks import sync_tasks

            await sync_tasks(session, {config.slug: config})
            row = await session.scalar(
                sa.select(Dataset)
                .join(Task, col(Task.id) == col(Dataset.task_id))
                .where(col(Task.slug) == config.slug, col(Dataset.name) == dataset.name)
            )
        assert row is not None
        return row


async def prepare_datasets(
    services: Services, *, tasks: Iterable[str] | None = None
) -> list[PreparedDataset]:
    """Prepare every dataset of every loaded task (or of `tasks`); a second run changes nothing.

    Idempotent and safe to run from two processes at once: files are content-addressed and
    written by atomic rename, rows are set to the same values by both.
    """
    wanted = set(tasks) if tasks is not None else None
    prepared = []
    for slug, config in sorted(services.tasks.items()):
        if wanted is not None and slug not in wanted:
            continue
        for dataset in config.datasets:
            prepared.append(await prepare_dataset(services, config, dataset))
    return prepared


def public_examples(
    config: TaskConfig, *, dataset: str | None = None, limit: int | None = None
) -> Rows:
    """The rows of the task's public datasets (labels included), for testing a model locally.

    Generator and `file://` sources are read directly; no server or storage is needed.
    """
    chosen = [
        d
        for d in config.datasets
        if d.access == "public" and (dataset is None or d.name == dataset)
    ]
    if not chosen:
        what = f"no public dataset named {dataset!r}" if dataset else "no public dataset"
        raise DatasetError(f"task {config.slug!r} has {what}")
    rows: Rows = []
    for d in chosen:
        where = f"task {config.slug!r}, dataset {d.name!r}"
        if d.source.startswith("generator:"):
            part = generate_rows(d.source.removeprefix("generator:"), d.options)
        elif d.source.startswith("file://"):
            parsed = urlparse(d.source)
            data = Path(parsed.netloc + parsed.path).read_bytes()
            if d.sha256 and hashlib.sha256(data).hexdigest() != d.sha256:
                raise ChecksumMismatch(f"{where}: the file does not match the pinned sha256")
            part = decode_rows(data, where=where)
        else:
            raise DatasetError(
                f"{where}: source {d.source!r} is only available on the server; "
                "local testing needs a generator: or file:// source"
            )
        _check_rows(part, config, d)
        rows.extend(part)
    return rows[:limit] if limit is not None else rows


# The text generators (sentiment, qa) register themselves on import; they live in their own
# module to keep this one small. Imported last: they use register_generator from above.
import core.corpora  # noqa: E402

# The translation task's corpus (Velan -> English) registers its generator on import too.
import core.translation_corpus  # noqa: E402, F401
