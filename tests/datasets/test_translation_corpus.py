"""The translation task's corpus (generator `translation`): deterministic, pinned, disjoint
splits, and a language whose order and endings differ from English's as documented."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from core.datasets import DatasetError, encode_rows, generate_rows, public_examples
from core.taskconfig import load_task_config
from core.translation_corpus import ADJECTIVE_CASE, DETERMINERS, NOUN_CASE, SPLIT_SIZES
from task_configs import FOLDER as SHIPPED_TASKS

CONFIG = SHIPPED_TASKS / "translation.toml"


def test_the_shipped_task_config_pins_what_the_generator_makes() -> None:
    config = load_task_config(CONFIG)
    assert config.eval.eval_server_id == "translation"
    assert config.build.gpu and config.eval.instance_type.startswith("ml.p")
    assert [m.name for m in config.metrics] == ["bleu", "chrf"]
    hidden = [d for d in config.datasets if d.access == "hidden"]
    assert [d.name for d in hidden] == ["heldout"]
    for dataset in config.datasets:
        rows = generate_rows("translation", dataset.options)
        assert hashlib.sha256(encode_rows(rows)).hexdigest() == dataset.sha256, dataset.name
    assert len(generate_rows("translation", hidden[0].options)) >= 2000
    examples = public_examples(config)
    assert len(examples) == 20 and set(examples[0]) == {"uid", "source", "translation"}


def test_splits_are_deterministic_sized_and_disjoint() -> None:
    splits = {s: generate_rows("translation", {"split": s}) for s in SPLIT_SIZES}
    assert {s: len(r) for s, r in splits.items()} == SPLIT_SIZES
    assert generate_rows("translation", {"split": "heldout"}) == splits["heldout"]
    sources = [r["source"] for rows in splits.values() for r in rows]
    assert len(set(sources)) == len(sources)
    uids = [r["uid"] for rows in splits.values() for r in rows]
    assert len(set(uids)) == len(uids)
    assert generate_rows("translation", {"split": "train", "n": 5}) == splits["train"][:5]


def test_velan_is_verb_final_with_endings_and_english_is_a_sentence() -> None:
    rows = generate_rows("translation", {"split": "heldout"})
    cases = {*NOUN_CASE.values(), *ADJECTIVE_CASE.values()}
    determiners = {d for forms in DETERMINERS.values() for d in forms.values()}
    questions = 0
    for row in rows:
        words = row["source"].split()
        english = row["translation"]
        assert english[0].isupper() and english[-1] in ".?" and english[-2] != " "
        if words[-1] == "?":
            # A question: the statement's words, then `li`; English fronts do/does/did.
            questions += 1
            assert words[-2] == "li" and english.split()[0] in ("Do", "Does", "Did")
            words = words[:-1]
        else:
            assert words[-1] == "." and english.endswith(".")
        # The verb comes last, never a noun, adjective or determiner.
        assert words[-2][-2:] not in cases and words[-2] not in determiners
    assert 0.1 < questions / len(rows) < 0.2
    text = " ".join(r["translation"] for r in rows)
    # The irregular words occur in the hidden set (a lexicon must learn them, not a rule).
    counts = Counter(text.lower().replace(".", "").split())
    for word in ("children", "men", "mice", "saw", "took", "an", "not"):
        assert counts[word] > 0, word
    velan = Counter(w for r in rows for w in r["source"].split())
    assert velan["solkar"] + velan["solkom"] + velan["solkis"] > 0  # child -> children


def test_bad_options_are_refused_naming_what_to_use() -> None:
    with pytest.raises(DatasetError, match="split must be one of heldout, examples, train"):
        generate_rows("translation", {"split": "dev"})
    with pytest.raises(DatasetError, match="unknown option"):
        generate_rows("translation", {"seed": 3})
    with pytest.raises(DatasetError, match="n must be >= 1"):
        generate_rows("translation", {"n": 0})
