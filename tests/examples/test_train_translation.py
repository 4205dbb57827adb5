"""The translation example trains in seconds into the shipped weights, and what it learned is
the language's: its words (irregular ones too), its reordering, and its heldout BLEU."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sacrebleu
from typer.testing import CliRunner

from cli.main import app
from core.datasets import generate_rows
from core.examples import EXAMPLES, example_folder
from core.examples.train_translation import NAME, WEIGHTS, train_lexicon, translate_rows
from core.modelkit import copy_example, test_model_folder
from core.taskconfig import load_task_config
from task_configs import FOLDER as SHIPPED_TASKS


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trained = train_lexicon(tmp_path_factory.mktemp("lexicon"))
    assert trained.seconds < 60 and trained.n_pairs == 8000
    return trained.folder


def test_training_again_writes_the_shipped_weights(folder: Path) -> None:
    assert EXAMPLES[NAME] == "translation"
    shipped = example_folder(NAME) / WEIGHTS
    assert (folder / WEIGHTS).read_bytes() == shipped.read_bytes()


def test_it_learned_words_irregulars_and_the_order(folder: Path) -> None:
    model = json.loads((folder / WEIGHTS).read_text())
    phrases = model["phrases"]
    assert phrases["tavar"] == "dog" and phrases["tavekom"] == "dogs"
    assert phrases["solkar"] == "children" and phrases["vazru"] == "saw"
    assert phrases["nevidet"] == "does not see"
    assert phrases["."] == "." and phrases["?"] == "?"
    # Determiners come before nouns in English, the verb before the object; two adjectives
    # of one noun swap (Velan writes them in mirror order).
    assert model["before"]["ta ar"] > 0.9 and model["before"]["et om"] > 0.9
    assert model["keep"]["ul"] < 0.1
    # The object's and the place's determiners are both "the": never seen apart, they are
    # ordered by the overall order (object first), not left in Velan's order.
    assert "tu ti" not in model["before"] and model["rank"]["tu"] < model["rank"]["ti"]
    # The question particle becomes an auxiliary put first (one of them, whatever the tense).
    assert (
        phrases["li"] in ("do", "does", "did") and min(model["rank"], key=model["rank"].get) == "li"
    )


def test_heldout_bleu_and_what_it_gets_wrong(folder: Path) -> None:
    heldout = generate_rows("translation", {"split": "heldout"})
    hypotheses = translate_rows(folder, heldout)
    references = [r["translation"] for r in heldout]
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    # What core/examples/README.md reports (90.89 and 96.64).
    assert (round(bleu, 2), round(chrf, 2)) == (90.89, 96.64)
    wrong = [(h, r) for h, r in zip(hypotheses, references, strict=True) if h != r]
    # Its known weaknesses: "an" before a vowel (one English word per Velan determiner), and
    # questions (one auxiliary for all, the verb's form as in a statement).
    assert wrong and all(
        " an " in f" {r} " or r.startswith("An ") or r.endswith("?") for _, r in wrong
    )
    statements = [(h, r) for h, r in zip(hypotheses, references, strict=True) if r[-1] == "."]
    assert sum(h == r for h, r in statements) / len(statements) > 0.8


async def test_weighbridge_test_reports_bleu_on_the_public_examples(tmp_path: Path) -> None:
    """`weighbridge test`'s check (core.modelkit, sandboxed) gives the task's primary metric
    besides the share of exact answers."""
    config = load_task_config(SHIPPED_TASKS / "translation.toml")
    folder = tmp_path / "mt"
    copy_example(folder, NAME, config)
    report = await test_model_folder(folder, config)
    assert report.ok, report.error
    hypotheses = [e.answer["translation"] for e in report.examples]
    references = [r["translation"] for r in generate_rows("translation", {"split": "examples"})]
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    assert report.primary == {"metric": "bleu", "value": pytest.approx(bleu, abs=1e-9)}
    assert report.to_dict()["primary"]["metric"] == "bleu"
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True))
    assert report.accuracy == exact / len(references) < 1.0


def test_the_cli_prints_bleu_beside_the_exact_answers(tmp_path: Path) -> None:
    config = load_task_config(SHIPPED_TASKS / "translation.toml")
    folder = tmp_path / "mt"
    copy_example(folder, NAME, config)
    result = CliRunner().invoke(
        app,
        ["test", str(folder), "--task", "translation"],
        env={"COLUMNS": "200", "WEIGHBRIDGE_TASK_CONFIGS": str(SHIPPED_TASKS)},
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"20/20 answers well-formed, accuracy \d+\.\d%, bleu \d+\.\d+", result.output)
