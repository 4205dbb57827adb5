"""prepare_datasets stores each dataset once under its checksum and records it; readers verify."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.context import Services, start_services
from core.datasets import (
    ChecksumMismatch,
    DatasetError,
    prepare_datasets,
    public_examples,
    read_examples,
)
from core.models import Dataset, Task
from core.settings import Settings
from core.taskconfig import load_task_config, parse_task_config
from tests.conftest import FIXTURES, ROOT, make_settings


async def _rows(services: Services, slug: str) -> dict[str, Dataset]:
    async with services.db.session() as session:
        rows = await session.scalars(
            sa.select(Dataset).join(Task, Task.id == Dataset.task_id).where(Task.slug == slug)
        )
        return {d.name: d for d in rows}


async def test_prepare_stores_files_under_their_sha256_and_updates_rows(
    services: Services,
) -> None:
    prepared = await prepare_datasets(services)
    assert {(p.task, p.name) for p in prepared} == {("toy", "examples"), ("toy", "test")}
    rows = await _rows(services, "toy")
    for p in prepared:
        assert p.key == f"datasets/{p.sha256}/{p.name}.jsonl"
        data = await services.storage.read_bytes(p.key)
        assert hashlib.sha256(data).hexdigest() == p.sha256
        assert len(data.splitlines()) == p.n_examples
        assert p.written and p.updated
        row = rows[p.name]
        assert (row.uri, row.sha256, row.n_examples) == (p.key, p.sha256, p.n_examples)
    assert rows["test"].n_examples == 100  # options = { n = 100, seed = 1 }
    assert rows["examples"].n_examples == 20  # the toy generator's default n


async def test_second_preparation_changes_nothing(services: Services) -> None:
    first = await prepare_datasets(services)
    stamps = {
        p.key: services.storage.local_path(p.key).stat().st_mtime_ns  # type: ignore[union-attr]
        for p in first
    }
    second = await prepare_datasets(services)
    assert [(p.key, p.sha256, p.n_examples) for p in second] == [
        (p.key, p.sha256, p.n_examples) for p in first
    ]
    assert not any(p.written or p.updated for p in second)
    for key, stamp in stamps.items():
        assert services.storage.local_path(key).stat().st_mtime_ns == stamp  # type: ignore[union-attr]


async def test_two_preparers_at_once_agree(services: Services, settings: Settings) -> None:
    other = await start_services(settings, migrate=False)
    try:
        a, b = await asyncio.gather(prepare_datasets(services), prepare_datasets(other))
    finally:
        await other.close()
    assert [(p.key, p.sha256) for p in a] == [(p.key, p.sha256) for p in b]
    files = await services.storage.list("datasets/")
    assert len(files) == 2  # one file per dataset, no leftovers of the race
    rows = await _rows(services, "toy")
    assert {r.uri for r in rows.values()} == {p.key for p in a}


async def test_roles_in_one_process_prepare_each_dataset_once(services: Services) -> None:
    # `up` prepares at start while the demo (or a build) asks for the same datasets.
    a, b = await asyncio.gather(prepare_datasets(services), prepare_datasets(services))
    for first, second in zip(a, b, strict=True):
        assert (first.key, first.sha256) == (second.key, second.sha256)
        assert first.written and not second.written and not second.updated


async def test_a_pinned_checksum_that_differs_fails_naming_task_and_dataset(
    services: Services,
) -> None:
    config = services.tasks["toy"].model_dump()
    config["datasets"][1]["sha256"] = "0" * 64
    services.tasks["toy"] = parse_task_config(config, path="toy.toml")
    with pytest.raises(ChecksumMismatch) as info:
        await prepare_datasets(services)
    message = str(info.value)
    assert "task 'toy'" in message and "dataset 'test'" in message and "0" * 64 in message


async def test_read_examples_verifies_the_checksum(services: Services) -> None:
    prepared = {p.name: p for p in await prepare_datasets(services)}
    test = prepared["test"]
    rows = await read_examples(services.storage, test.key, test.sha256)
    assert len(rows) == 100 and all(r["label"] == r["x"] % 2 for r in rows)

    path = services.storage.local_path(test.key)
    assert path is not None
    tampered = path.read_bytes().replace(b'"label":0', b'"label":1', 1)
    path.write_bytes(tampered)
    with pytest.raises(ChecksumMismatch, match="checksum mismatch"):
        await read_examples(services.storage, test.key, test.sha256)

    with pytest.raises(DatasetError, match="not in storage"):
        await read_examples(services.storage, "datasets/abc/missing.jsonl", "a" * 64)


async def test_the_digits_task_prepares_with_its_pinned_checksums(
    tmp_path: Path, database_url: str, db: object
) -> None:
    settings = make_settings(tmp_path, database_url, task_configs=ROOT / "task_configs")
    services = await start_services(settings, migrate=False)
    try:
        prepared = {p.name: p for p in await prepare_datasets(services, tasks=["digits"])}
    finally:
        await services.close()
    config = load_task_config(ROOT / "task_configs" / "digits.toml")
    for dataset in config.datasets:
        assert prepared[dataset.name].sha256 == dataset.sha256
    assert prepared["examples"].n_examples == 20
    assert prepared["heldout"].n_examples == prepared["heldout-noisy"].n_examples == 450


def test_public_examples_of_a_task() -> None:
    digits = load_task_config(ROOT / "task_configs" / "digits.toml")
    rows = public_examples(digits)
    assert len(rows) == 20 and {"uid", "pixels", "label"} <= set(rows[0])
    assert len(public_examples(digits, limit=3)) == 3
    toy = load_task_config(FIXTURES / "task_configs" / "toy.toml")
    assert [r["x"] % 2 for r in public_examples(toy)] == [r["label"] for r in public_examples(toy)]
