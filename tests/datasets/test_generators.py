"""Dataset generators: deterministic, disjoint digits splits, seeded noise, clear refusals."""

from __future__ import annotations

from collections import Counter

import pytest

from core.datasets import DatasetError, encode_rows, generate_rows, generator_names


def _images(rows: list[dict]) -> Counter:
    return Counter((tuple(r["pixels"]), r["label"]) for r in rows)


def test_builtin_generators_are_registered() -> None:
    assert {"digits", "toy"} <= set(generator_names())


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("digits", {"split": "heldout"}),
        ("digits", {"split": "heldout", "noise": 3.0, "seed": 7}),
        ("toy", {"n": 50, "seed": 3}),
    ],
)
def test_generators_are_deterministic(name: str, options: dict) -> None:
    assert encode_rows(generate_rows(name, options)) == encode_rows(generate_rows(name, options))


def test_digits_train_and_heldout_partition_the_data() -> None:
    from sklearn.datasets import load_digits

    train = generate_rows("digits", {"split": "train"})
    heldout = generate_rows("digits", {"split": "heldout"})
    digits = load_digits()
    full = Counter(
        (tuple(float(v) for v in x), int(y))
        for x, y in zip(digits.data, digits.target, strict=True)
    )
    # Every image lands in exactly one of the two splits (duplicates counted as such).
    assert _images(train) + _images(heldout) == full
    assert len(train) + len(heldout) == len(digits.target)
    assert 0.2 < len(heldout) / len(digits.target) < 0.3
    # Stratified: every digit is in the held-out split about as often as in the data.
    counts = Counter(r["label"] for r in heldout)
    assert set(counts) == set(range(10))
    assert max(counts.values()) - min(counts.values()) <= 3


def test_digits_examples_are_a_small_public_part_of_train() -> None:
    examples = generate_rows("digits", {"split": "examples"})
    train = generate_rows("digits", {"split": "train"})
    assert 10 <= len(examples) <= 30
    assert {r["label"] for r in examples} == set(range(10))
    assert not _images(examples) - _images(train)
    row = examples[0]
    assert list(row) == ["uid", "pixels", "label"]
    assert len(row["pixels"]) == 64 and all(0 <= v <= 16 for v in row["pixels"])
    assert isinstance(row["label"], int)


def test_digits_noise_is_seeded_bounded_and_keeps_labels() -> None:
    clean = generate_rows("digits", {"split": "heldout"})
    noisy = generate_rows("digits", {"split": "heldout", "noise": 3.0, "seed": 7})
    other = generate_rows("digits", {"split": "heldout", "noise": 3.0, "seed": 8})
    assert [r["label"] for r in noisy] == [r["label"] for r in clean]
    assert noisy != clean and noisy != other
    assert all(0.0 <= v <= 16.0 for r in noisy for v in r["pixels"])


def test_noisy_digits_are_the_heldout_images_linked_to_their_originals() -> None:
    import numpy as np

    clean = generate_rows("digits", {"split": "heldout"})
    noisy = generate_rows("digits", {"split": "heldout", "noise": 3.0, "seed": 7})
    assert list(noisy[0]) == ["uid", "original_uid", "pixels", "label"]
    assert list(clean[0]) == ["uid", "pixels", "label"]  # no link without noise
    # Row i of the noisy set is image i of heldout plus noise, and says so.
    assert [r["original_uid"] for r in noisy] == [r["uid"] for r in clean]
    assert [r["uid"] for r in noisy] == [f"{r['uid']}-noisy" for r in clean]
    diff = np.array([r["pixels"] for r in noisy]) - np.array([r["pixels"] for r in clean])
    # Gaussian noise of std 3 (clipped to 0..16): centred near 0, no row left unchanged.
    assert abs(diff.mean()) < 0.5 and 1.0 < diff.std() < 3.0
    assert all(np.any(d != 0) for d in diff)
    # A subset keeps the link (n keeps the first rows of both).
    few = generate_rows("digits", {"split": "heldout", "noise": 3.0, "seed": 7, "n": 5})
    assert [r["original_uid"] for r in few] == [r["uid"] for r in clean[:5]]


def test_toy_rows_follow_the_fixture_contract() -> None:
    rows = generate_rows("toy", {"n": 100, "seed": 1})
    assert len(rows) == 100
    assert all(r["label"] == r["x"] % 2 for r in rows)
    assert len({r["uid"] for r in rows}) == 100
    assert generate_rows("toy", {"n": 100, "seed": 2}) != rows


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("nope", {}, "unknown dataset generator 'nope'"),
        ("digits", {"split": "validation"}, "split must be one of"),
        ("digits", {"nosie": 1.0}, "unknown option(s) ['nosie']"),
        ("toy", {"n": 0}, "n must be >= 1"),
    ],
)
def test_bad_generator_requests_are_refused_clearly(name: str, options: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=None) as info:
        generate_rows(name, options)
    assert message in str(info.value)
