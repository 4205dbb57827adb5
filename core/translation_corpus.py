"""The `translation` task's parallel corpus: Velan, a small synthetic language, and English.

Velan is made by rules from English-like sentences, so a model has to learn both the words
and the order: it is verb-final (subject, place, object, verb: S PP O V where English says
S V O PP), a noun phrase reads noun, adjectives (in mirror order), determiner, and a place
phrase ends with its postposition. Words inflect: nouns and adjectives take a case ending
(-ar/-ul subject, -om/-un object, -is/-us place), nouns a plural -ek- before it, verbs an
ending for present singular (-et), present plural (-ot) or past (-ib) and the prefix ne- for
"not". A yes/no question keeps the statement's order and ends with the particle `li` and
"?", where English puts do/does/did first and the verb in its base form. Some words are
irregular on either side (child/children ~ sil/solk, see/saw ~ videt/vazru, fish/fish ~
riba/ribek), and English writes "an" before a vowel.

`generator:translation` (registered with core.datasets) yields rows `{"uid", "source"
(Velan), "translation" (English)}` for the split asked: "heldout" (2,000 pairs), "examples"
(20) or "train" (8,000). Every split draws from one seeded stream of distinct sentences, so
no Velan sentence is in two splits, and the same options give the same bytes every time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from core.datasets import DatasetError, Rows, _options, register_generator

# Fixed once: changing any of these changes every translation file and its pinned checksum.
CORPUS_SEED = 20261206
SPLIT_SIZES = {"heldout": 2000, "examples": 20, "train": 8000}
SPLITS = tuple(SPLIT_SIZES)  # drawn in this order from the one stream


@dataclass(frozen=True)
class Noun:
    singular: str
    plural: str
    stem: str
    plural_stem: str = ""  # irregular Velan plural; regular: stem + "ek"


@dataclass(frozen=True)
class Verb:
    base: str
    third: str  # he/she/it form
    past: str
    stem: str
    irregular_past: str = ""  # a whole Velan past form (regular: stem + "ib")


NOUNS = (
    Noun("dog", "dogs", "tav"),
    Noun("cat", "cats", "miru"),
    Noun("bird", "birds", "pilo"),
    Noun("horse", "horses", "kavo"),
    Noun("farmer", "farmers", "zemad"),
    Noun("teacher", "teachers", "uchit"),
    Noun("child", "children", "sil", "solk"),
    Noun("man", "men", "vir", "vorr"),
    Noun("woman", "women", "zhen", "zhan"),
    Noun("mouse", "mice", "mus", "mys"),
    Noun("fish", "fish", "riba"),
    Noun("ox", "oxen", "bik", "bokk"),
    Noun("apple", "apples", "abel"),
    Noun("egg", "eggs", "yaik"),
    Noun("owl", "owls", "sova"),
    Noun("elephant", "elephants", "slon"),
    Noun("letter", "letters", "pism"),
    Noun("book", "books", "kniga"),
    Noun("house", "houses", "dom"),
    Noun("garden", "gardens", "sad"),
    Noun("river", "rivers", "reka"),
    Noun("city", "cities", "grad"),
    Noun("tree", "trees", "drev"),
    Noun("boat", "boats", "lod"),
)
ADJECTIVES = {
    "big": "gral",
    "small": "mal",
    "red": "krasn",
    "old": "star",
    "young": "mlad",
    "happy": "vesel",
    "quiet": "tikh",
    "green": "zelen",
    "black": "chern",
    "white": "bel",
    "angry": "zlob",
    "empty": "prazn",
}
VERBS = (
    Verb("see", "sees", "saw", "vid", "vazru"),
    Verb("eat", "eats", "ate", "jed", "ozru"),
    Verb("like", "likes", "liked", "lyub"),
    Verb("find", "finds", "found", "najd", "nashru"),
    Verb("carry", "carries", "carried", "nos"),
    Verb("chase", "chases", "chased", "gon"),
    Verb("watch", "watches", "watched", "glad"),
    Verb("hear", "hears", "heard", "slish"),
    Verb("take", "takes", "took", "ber", "vzyru"),
    Verb("bring", "brings", "brought", "pris"),
    Verb("draw", "draws", "drew", "risu"),
    Verb("wash", "washes", "washed", "moy"),
    Verb("follow", "follows", "followed", "sled"),
    Verb("help", "helps", "helped", "pomag"),
)
PREPOSITIONS = {"in": "vo", "near": "pri", "under": "pod", "behind": "za", "with": "so"}
# Case endings of nouns and adjectives, and the determiners, by role in the sentence.
NOUN_CASE = {"subject": "ar", "object": "om", "place": "is"}
ADJECTIVE_CASE = {"subject": "ul", "object": "un", "place": "us"}
DETERMINERS = {
    "the": {"subject": "ta", "object": "tu", "place": "ti"},
    "a": {"subject": "ka", "object": "ku", "place": "ki"},
}
VERB_ENDING = {"present-singular": "et", "present-plural": "ot", "past": "ib"}
VOWELS = "aeiou"
QUESTION_RATE = 0.15
QUESTION_PARTICLE = "li"


@dataclass(frozen=True)
class Phrase:
    """A noun phrase in both languages (word lists, English order and Velan order)."""

    english: list[str]
    velan: list[str]
    plural: bool


def _noun_phrase(rng: Any, role: str) -> Phrase:
    noun = NOUNS[rng.randint(len(NOUNS))]
    plural = rng.random_sample() < 0.35
    n_adjectives = int(rng.choice(3, p=[0.5, 0.35, 0.15]))
    names = sorted(ADJECTIVES)
    adjectives = [names[i] for i in rng.permutation(len(names))[:n_adjectives]]
    article = "the" if rng.random_sample() < 0.55 else ("" if plural else "a")

    english = [*adjectives, noun.plural if plural else noun.singular]
    if article == "a":
        english.insert(0, "an" if english[0][0] in VOWELS else "a")
    elif article:
        english.insert(0, article)

    stem = (noun.plural_stem or noun.stem + "ek") if plural else noun.stem
    velan = [stem + NOUN_CASE[role]]
    velan += [ADJECTIVES[a] + ADJECTIVE_CASE[role] for a in reversed(adjectives)]
    if article:
        velan.append(DETERMINERS[article][role])
    return Phrase(english, velan, plural)


def sentence_pair(rng: Any) -> tuple[str, str]:
    """One (Velan, English) pair drawn from `rng` (a numpy RandomState)."""
    subject = _noun_phrase(rng, "subject")
    obj = _noun_phrase(rng, "object")
    place = _noun_phrase(rng, "place") if rng.random_sample() < 0.4 else None
    preposition = sorted(PREPOSITIONS)[rng.randint(len(PREPOSITIONS))]
    verb = VERBS[rng.randint(len(VERBS))]
    past = rng.random_sample() < 0.4
    negated = rng.random_sample() < 0.15
    # A question keeps Velan's order and adds `li`; English fronts do/does/did instead.
    if rng.random_sample() < QUESTION_RATE:
        return _question(subject, obj, place, preposition, verb, past=past)

    if past:
        english_verb = ["did", "not", verb.base] if negated else [verb.past]
        velan_verb = verb.irregular_past or verb.stem + VERB_ENDING["past"]
    else:
        if subject.plural:
            english_verb = ["do", "not", verb.base] if negated else [verb.base]
            ending = VERB_ENDING["present-plural"]
        else:
            english_verb = ["does", "not", verb.base] if negated else [verb.third]
            ending = VERB_ENDING["present-singular"]
        velan_verb = verb.stem + ending
    if negated:
        velan_verb = "ne" + velan_verb

    english = [*subject.english, *english_verb, *obj.english]
    velan = list(subject.velan)
    if place is not None:
        english += [preposition, *place.english]
        velan += [*place.velan, PREPOSITIONS[preposition]]
    velan += [*obj.velan, velan_verb]
    text = " ".join(english)
    return " ".join(velan) + " .", text[0].upper() + text[1:] + "."


def _question(
    subject: Phrase,
    obj: Phrase,
    place: Phrase | None,
    preposition: str,
    verb: Verb,
    *,
    past: bool,
) -> tuple[str, str]:
    if past:
        auxiliary = "did"
        velan_verb = verb.irregular_past or verb.stem + VERB_ENDING["past"]
    else:
        auxiliary = "do" if subject.plural else "does"
        ending = VERB_ENDING["present-plural" if subject.plural else "present-singular"]
        velan_verb = verb.stem + ending
    english = [auxiliary, *subject.english, verb.base, *obj.english]
    velan = list(subject.velan)
    if place is not None:
        english += [preposition, *place.english]
        velan += [*place.velan, PREPOSITIONS[preposition]]
    velan += [*obj.velan, velan_verb, QUESTION_PARTICLE]
    text = " ".join(english)
    return " ".join(velan) + " ?", text[0].upper() + text[1:] + "?"


@functools.cache
def corpus_splits() -> dict[str, tuple[tuple[str, str], ...]]:
    """Every split's pairs, drawn from one stream; a Velan sentence appears only once.

    Made once per process (about a second) and kept: every split needs the whole stream."""
    import numpy as np

    # RandomState's stream is frozen by numpy's compatibility policy (NEP 19).
    rng = np.random.RandomState(CORPUS_SEED)
    seen: set[str] = set()
    splits: dict[str, tuple[tuple[str, str], ...]] = {}
    for split in SPLITS:
        pairs: list[tuple[str, str]] = []
        while len(pairs) < SPLIT_SIZES[split]:
            source, target = sentence_pair(rng)
            if source not in seen:
                seen.add(source)
                pairs.append((source, target))
        splits[split] = tuple(pairs)
    return splits


@register_generator("translation")
def translation_rows(options: dict[str, Any]) -> Rows:
    """Velan -> English pairs: `source`, `translation` (the reference).

    Options: `split` ("heldout", "examples" or "train") and `n` (keep the first n rows).
    """
    opts = _options(options, {"split": "heldout", "n": None}, "translation")
    split = opts["split"]
    if split not in SPLIT_SIZES:
        raise DatasetError(f"generator 'translation': split must be one of {', '.join(SPLITS)}")
    pairs = corpus_splits()[split]
    if opts["n"] is not None:
        n = int(opts["n"])
        if n < 1:
            raise DatasetError("generator 'translation': n must be >= 1")
        pairs = pairs[:n]
    return [
        {"uid": f"translation-{split}-{i:04d}", "source": source, "translation": target}
        for i, (source, target) in enumerate(pairs)
    ]
