"""The extractive QA task: its generator is deterministic and pinned, its answers are spans of
their passages, its baseline (a learned span scorer) trains in seconds into the shipped
weights; and the SQuAD v1.1 rules, written here independently of metrics/qa.py, which
test_text_tasks_up.py holds the stack's scores to on the stored predictions."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from core.datasets import encode_rows, generate_rows
from core.examples import example_folder
from core.examples.train_digits import TrainedModel
from core.taskconfig import load_task_config
from task_configs import FOLDER as SHIPPED_TASKS

# Measured: F1 0.9345, exact match 0.9325 on heldout (docs/tasks.md); floors a little below.
F1_FLOOR = 0.91
EXACT_MATCH_FLOOR = 0.91


# ---------------------------------------------------------------------------------------------
# SQuAD v1.1's rules, written here from their description (not from metrics/qa.py): lower-case;
# drop every ASCII punctuation character; drop the words a, an, the; split on whitespace. Exact
# match: the normalised strings are equal. F1: harmonic mean of token precision and recall
# over the multiset of shared tokens (0 when nothing is shared). Each example takes the best
# over its gold answers; the score is the mean over examples.

PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def squad_tokens(text: str) -> list[str]:
    kept = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return [word for word in kept.split() if word not in ("a", "an", "the")]


def squad_exact(prediction: str, gold: str) -> float:
    return 1.0 if squad_tokens(prediction) == squad_tokens(gold) else 0.0


def squad_f1(prediction: str, gold: str) -> float:
    predicted, wanted = squad_tokens(prediction), squad_tokens(gold)
    remaining = list(wanted)
    shared = 0
    for token in predicted:
        if token in remaining:
            remaining.remove(token)
            shared += 1
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(wanted)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> tuple[float, float]:
    exact = [max(squad_exact(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True)]
    f1 = [max(squad_f1(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True)]
    return sum(exact) / len(exact), sum(f1) / len(f1)


def test_the_reference_implementation_follows_the_rules() -> None:
    assert squad_tokens("The  Cape-Town, an OFFICE!") == ["capetown", "office"]
    assert squad_exact("a software engineer", "Software Engineer.") == 1.0
    assert squad_f1("Maria Lopez", "Lopez") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert squad_f1("the", "a") == 0.0  # both empty after normalisation: F1 0, as in v1.1
    assert squad_exact("the", "a") == 1.0
    assert squad_scores(["Oslo", "in 1987"], [["Oslo"], ["1987", "x"]]) == (0.5, 0.8333333333333333)


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    from core.examples.train_text import train_models

    folder = tmp_path_factory.mktemp("qa-model")
    return train_models(folder, models=("qa-span",))["qa-span"]


def test_the_datasets_are_the_pinned_ones_every_time() -> None:
    config = load_task_config(SHIPPED_TASKS / "qa.toml")
    for dataset in config.datasets:
        name = dataset.source.removeprefix("generator:")
        first = encode_rows(generate_rows(name, dataset.options))
        second = encode_rows(generate_rows(name, dataset.options))
        assert first == second
        assert hashlib.sha256(first).hexdigest() == dataset.sha256, dataset.name


def test_answers_are_spans_among_distracting_facts() -> None:
    heldout = generate_rows("qa", {"split": "heldout"})
    assert len(heldout) >= 2000
    for row in heldout:
        assert len(row["answers"]) == len(row["answer_starts"]) >= 1
        for answer, start in zip(row["answers"], row["answer_starts"], strict=True):
            assert row["context"][start : start + len(answer)] == answer, row["uid"]
        # Two biographies of the same shape in every passage: the question names which.
        assert row["context"].count(" born") + row["context"].count("Born ") >= 2
    # Many question templates, none dominating.
    openings = Counter(" ".join(r["question"].split()[:2]) for r in heldout)
    assert len(openings) >= 8 and max(openings.values()) < 0.3 * len(heldout)
    assert len({r["context"] for r in heldout}) == len(heldout)
    train = {(r["context"], r["question"]) for r in generate_rows("qa", {"split": "train"})}
    overlap = sum((r["context"], r["question"]) in train for r in heldout)
    assert overlap == 0


def test_the_generator_names_a_bad_option() -> None:
    from core.datasets import DatasetError

    with pytest.raises(DatasetError, match="split must be one of examples, train, heldout"):
        generate_rows("qa", {"split": "test"})
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['seed'\]"):
        generate_rows("qa", {"seed": 1})


def test_the_baseline_trains_in_seconds_and_is_the_shipped_one(trained: TrainedModel) -> None:
    import torch

    from core.examples.train_text import predictions_of

    assert trained.seconds < 90
    assert trained.train_accuracy > 0.9  # exactly right spans on its training questions
    shipped = torch.load(example_folder("qa-span") / "model.pt", weights_only=True)
    fresh = torch.load(trained.folder / "model.pt", weights_only=True)
    assert shipped.keys() == fresh.keys()
    assert all(torch.allclose(shipped[k], fresh[k], atol=1e-3) for k in shipped)
    heldout = generate_rows("qa", {"split": "heldout"})
    same = sum(
        a == b
        for a, b in zip(
            predictions_of("qa-span", example_folder("qa-span"), heldout),
            predictions_of("qa-span", trained.folder, heldout),
            strict=True,
        )
    )
    assert same >= 0.995 * len(heldout)


def test_the_handler_answers_a_passage_it_has_never_seen() -> None:
    """Names, places and a phrasing outside the generator's lists: still a span, and right."""
    from core.examples.train_digits import handler_context, load_handler

    folder = example_folder("qa-span")
    handler = load_handler(folder)
    context = handler_context(folder)
    handler.handle(None, context)
    passage = (
        "Zofia Kowalczyk was born in Gdansk in 1978. Arjun Mehta was born in Pune in 1990. "
        "Zofia works as a violinist at Nordlicht Records."
    )
    asked = [
        {"body": {"context": passage, "question": "Where was Arjun Mehta born?"}},
        {"body": {"context": passage, "question": "When was Zofia Kowalczyk born?"}},
    ]
    answers = [a["answer"] for a in handler.handle(asked, context)]
    assert all(a in passage for a in answers)
    assert answers == ["Pune", "1978"]


def test_the_handler_copes_with_empty_and_long_passages() -> None:
    from core.examples.train_digits import handler_context, load_handler

    folder = example_folder("qa-span")
    handler = load_handler(folder)
    context = handler_context(folder)
    handler.handle(None, context)
    long = " ".join(["Maria Lopez was born in Oslo in 1990."] * 600)  # 6,000 tokens
    asked = [
        {"body": {"context": "", "question": ""}},
        {"body": {"context": long, "question": "Where was Maria Lopez born?"}},
    ]
    assert handler.handle(asked, context) == [{"answer": ""}, {"answer": "Oslo"}]
