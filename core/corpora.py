"""Synthetic text datasets: product reviews (sentiment) and short fact passages (extractive QA).

Both generators build their rows from templates and small vocabularies with a seeded
`random.Random` (whose choices are stable across Python versions), so the same options give
the same rows, byte for byte, and the task configs pin their sha256. The templates are made so
that a bag-of-words model is good but not perfect (negation, contrast, other people's opinions)
and a QA model must find which of several similar facts the question is about.
"""

from __future__ import annotations

import random
import re
from typing import Any

from core.datasets import DatasetError, Rows, _options, register_generator


def _listed(text: str) -> tuple[str, ...]:
    """A vocabulary written as one comma-separated string (entries may hold spaces)."""
    return tuple(word.strip() for word in text.split(","))


# ---------------------------------------------------------------------------------------------
# Sentiment: three classes of one- or two-clause product reviews

SENTIMENT_LABELS = ("negative", "neutral", "positive")
SENTIMENT_SPLITS = {"examples": (11, 30), "train": (23, 6000), "heldout": (37, 2400)}

ITEMS = _listed(
    "blender, kettle, phone, laptop, jacket, backpack, camera, lamp, chair, desk, headset, "
    "keyboard, toaster, vacuum, printer, tent, bicycle, watch, speaker, mattress, novel, game, "
    "router, drill, umbrella, scarf, monitor"
)
PARTS = _listed(
    "battery, screen, handle, strap, lid, cable, fabric, manual, packaging, button, zipper, "
    "motor, finish, sound, display, wheel"
)
POSITIVE = _listed(
    "great, excellent, wonderful, sturdy, reliable, fantastic, superb, lovely, impressive, "
    "comfortable, solid, brilliant, pleasant, perfect, good"
)
NEGATIVE = _listed(
    "terrible, awful, flimsy, disappointing, useless, broken, poor, cheap, horrible, noisy, "
    "fragile, bad, dreadful, faulty, uncomfortable"
)
INTENSIFIERS = ("", "", "", "really ", "very ", "quite ", "truly ", "rather ")
NEUTRAL_SENTENCES = (
    "I bought the {item} on {day}.",
    "The {item} arrived on {day} in a {colour} box.",
    "The {item} comes in {colour} and {colour2}.",
    "I use the {item} mostly on {day}s.",
    "The {item} has a {colour} {part}.",
    "My {relative} ordered the same {item} last {period}.",
    "The {item} was delivered to my {place}.",
    "I have had the {item} for a {period}.",
)
DAYS = _listed("monday, tuesday, wednesday, thursday, friday, saturday, sunday")
COLOURS = _listed("red, blue, green, black, white, grey, silver, yellow")
RELATIVES = _listed("sister, brother, friend, neighbour, cousin, colleague, father")
PLACES = _listed("office, flat, house, parents, cabin")
PERIODS = _listed("week, month, year")

# Robustness: synonyms a model trained on the vocabulary above has mostly never seen.
SYNONYMS = {
    "great": "terrific",
    "excellent": "outstanding",
    "wonderful": "marvellous",
    "sturdy": "robust",
    "reliable": "dependable",
    "fantastic": "fabulous",
    "superb": "splendid",
    "good": "fine",
    "perfect": "flawless",
    "terrible": "atrocious",
    "awful": "appalling",
    "flimsy": "rickety",
    "useless": "worthless",
    "broken": "busted",
    "poor": "shoddy",
    "bad": "lousy",
    "horrible": "ghastly",
    "faulty": "defective",
    "noisy": "loud",
    "not": "never",
    "bought": "purchased",
    "arrived": "came",
}


def _review(rng: random.Random) -> tuple[str, str]:
    """One review and its label (the reviewer's own overall opinion)."""
    item = rng.choice(ITEMS)
    part = rng.choice(PARTS)
    pos, neg = rng.choice(POSITIVE), rng.choice(NEGATIVE)
    very = rng.choice(INTENSIFIERS)
    shape = rng.random()
    label = rng.choice(("negative", "positive"))
    own, other = (pos, neg) if label == "positive" else (neg, pos)
    if shape < 0.40:
        # Plain opinion.
        text = rng.choice(
            (
                f"The {item} is {very}{own}.",
                f"This {item} was {very}{own}.",
                f"I found the {item} {very}{own}.",
                f"What a {own} {item}.",
            )
        )
    elif shape < 0.52:
        # Negated opinion: the label is the opposite of the adjective's polarity.
        text = rng.choice(
            (
                f"The {item} is not {very}{other}.",
                f"This {item} was not {other} at all.",
                f"I would not call the {item} {other}.",
            )
        )
    elif shape < 0.64:
        # Contrast: both polarities appear; the clause after "but"/"overall" decides.
        text = rng.choice(
            (
                f"The {part} is {other}, but overall the {item} is {own}.",
                f"I expected the {item} to be {other}, but it turned out {very}{own}.",
                f"Although the {part} looks {other}, the {item} is {very}{own}.",
            )
        )
    elif shape < 0.72:
        # Someone else's opinion as a distractor.
        who = rng.choice(RELATIVES)
        text = rng.choice(
            (
                f"My {who} thinks the {item} is {other}, but to me it is {own}.",
                f"Reviews called the {item} {other}; mine has been {very}{own}.",
            )
        )
    else:
        label = "neutral"
        template = rng.choice(NEUTRAL_SENTENCES)
        colour, colour2 = rng.sample(COLOURS, 2)
        text = template.format(
            item=item,
            part=part,
            day=rng.choice(DAYS),
            colour=colour,
            colour2=colour2,
            relative=rng.choice(RELATIVES),
            place=rng.choice(PLACES),
            period=rng.choice(PERIODS),
        )
        text = text[0].upper() + text[1:]
    return text, label


def _typo(word: str, rng: random.Random) -> str:
    """Swap two neighbouring letters, drop one, or double one (words of 4+ letters)."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def perturb_text(text: str, rng: random.Random, *, rate: float) -> str:
    """Replace known words by a synonym, or put a typo in other words, each with `rate`."""
    out = []
    for token in text.split(" "):
        core = token.rstrip(".,;")
        tail = token[len(core) :]
        lower = core.lower()
        if rng.random() < rate:
            if lower in SYNONYMS:
                swap = SYNONYMS[lower]
                core = swap.capitalize() if core[:1].isupper() else swap
            else:
                core = _typo(core, rng)
        out.append(core + tail)
    return " ".join(out)


@register_generator("sentiment")
def sentiment_rows(options: dict[str, Any]) -> Rows:
    """Product reviews: `text` (one or two sentences), `label` (negative, neutral, positive).

    Options: `split` ("examples": 30 public rows; "train": 6,000; "heldout": 2,400, each from
    its own seed), `perturb` (0..1: the share of words given a synonym or a typo; the rows are
    then the same reviews, uid `<original uid>-perturbed`, `original_uid` naming the original),
    `seed` (of the perturbation), `n` (keep the first n rows).
    """
    opts = _options(
        options, {"split": "heldout", "perturb": 0.0, "seed": 0, "n": None}, "sentiment"
    )
    split = opts["split"]
    if split not in SENTIMENT_SPLITS:
        raise DatasetError(
            f"generator 'sentiment': split must be one of {', '.join(SENTIMENT_SPLITS)}"
        )
    rate = float(opts["perturb"])
    if not 0.0 <= rate <= 1.0:
        raise DatasetError("generator 'sentiment': perturb must be between 0 and 1")
    seed, size = SENTIMENT_SPLITS[split]
    if opts["n"] is not None:
        size = min(size, int(opts["n"]))
    rng = random.Random(seed)
    noise = random.Random(int(opts["seed"]))
    rows: Rows = []
    for i in range(size):
        text, label = _review(rng)
        uid = f"sentiment-{split}-{i:05d}"
        row: dict[str, Any] = {"uid": uid}
        if rate > 0:
            row = {"uid": f"{uid}-perturbed", "original_uid": uid}
            text = perturb_text(text, noise, rate=rate)
        row["text"] = text
        row["label"] = label
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Extractive QA: a passage of facts about people and companies, a question, its answer span

QA_SPLITS = {"examples": (101, 20), "train": (211, 4000), "heldout": (307, 2000)}

# First names with the pronoun a passage uses for them.
FIRST_NAMES = {
    **dict.fromkeys(
        _listed("Maria, Aiko, Fatima, Olga, Ingrid, Sofia, Amara, Yara, Leila, Hana, Priya, Elena"),
        "she",
    ),
    **dict.fromkeys(
        _listed("Jonas, Pedro, Liam, Kwame, Ravi, Tomas, Hugo, Nils, Mateo, Oscar, Karim, Chen"),
        "he",
    ),
}
SURNAMES = _listed(
    "Lopez, Berg, Tanaka, Silva, Haddad, Murphy, Wang, Ivanova, Mensah, Larsen, Patel, Rossi, "
    "Novak, Okafor, Dubois, Costa, Holm, Nasser, Garcia, Sato, Klein, Rao, Petrov, Adeyemi"
)
CITIES = _listed(
    "Lisbon, Oslo, Nairobi, Kyoto, Lima, Porto, Dublin, Hanoi, Quito, Tallinn, Accra, Bergen, "
    "Cusco, Seville, Krakow, Mumbai, Tunis, Geneva, Buenos Aires, New Delhi, Rio de Janeiro, "
    "Cape Town, San Diego, Hong Kong"
)
JOBS = _listed(
    "teacher, nurse, pilot, chemist, architect, baker, lawyer, journalist, carpenter, dentist, "
    "software engineer, civil engineer, marine biologist, graphic designer, data analyst, bus "
    "driver"
)
COMPANY_STEMS = _listed(
    "Acme, Borealis, Cobalt, Driftwood, Ember, Fjord, Granite, Helix, Indigo, Juniper, Kestrel, "
    "Lumen, Meridian, Nimbus, Orchard, Pinnacle, Quartz, Redwood, Summit, Tidewater"
)
COMPANY_KINDS = _listed("Labs, Foods, Motors, Systems, Textiles, Press, Energy, Studios")
PRODUCTS = _listed(
    "bicycles, solar panels, board games, running shoes, coffee machines, sailboats, "
    "microscopes, violins, tea, drones, wool sweaters, garden tools"
)


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _person(rng: random.Random, taken: set[str]) -> tuple[str, str, str]:
    """First name, surname and pronoun of someone whose names the passage does not use yet."""
    while True:
        first, last = rng.choice(sorted(FIRST_NAMES)), rng.choice(SURNAMES)
        if first not in taken and last not in taken:
            taken.update((first, last))
            return first, last, FIRST_NAMES[first]


Fact = tuple[str, list[tuple[str, list[str]]]]  # a sentence and the questions it answers


def _biography(
    rng: random.Random, person: tuple[str, str, str], *, city: str, year: int, job: str, at: str
) -> list[Fact]:
    """Where and when someone was born, then what they do (by first name, surname or pronoun:
    the sentences stay together, so "She" is the person just named)."""
    first, last, pronoun = person
    name = f"{first} {last}"
    return [
        (
            rng.choice(
                (
                    f"{name} was born in {city} in {year}.",
                    f"Born in {year}, {name} grew up in {city}.",
                )
            ),
            [
                (f"Where was {name} born?", [city]),
                (f"In which city did {name} grow up?", [city]),
                (f"When was {name} born?", [str(year)]),
                (f"In what year was {last} born?", [str(year)]),
            ],
        ),
        (
            rng.choice(
                (
                    f"{first} works as {_a(job)} at {at}.",
                    f"Today {last} is {_a(job)} with {at}.",
                    f"{pronoun.capitalize()} works as {_a(job)} at {at}.",
                )
            ),
            [
                (f"What is {name}'s job?", [job, _a(job)]),
                (f"What does {name} do for a living?", [job]),
                (f"Where does {name} work?", [at]),
                (f"Which company employs {last}?", [at]),
            ],
        ),
    ]


def _passage(rng: random.Random) -> tuple[str, list[tuple[str, list[str]]]]:
    """A passage of 6-8 facts and the questions it answers: (question, [gold answers])."""
    taken: set[str] = set()
    people = [_person(rng, taken) for _ in range(3)]
    cities = rng.sample(CITIES, 5)
    years = rng.sample(range(1931, 2006), 4)
    jobs = rng.sample(JOBS, 3)
    stems = rng.sample(COMPANY_STEMS, 2)
    companies = [f"{stem} {rng.choice(COMPANY_KINDS)}" for stem in stems]
    products = rng.sample(PRODUCTS, 2)
    # Two biographies of the same shape (two cities, two years, two jobs, two companies), each
    # a block of sentences kept in order; the blocks and the other facts are shuffled.
    blocks: list[list[Fact]] = [
        _biography(rng, people[k], city=cities[k], year=years[k], job=jobs[k], at=companies[k])
        for k in range(2)
    ]
    if rng.random() < 0.5:  # the first person moved: two cities for one person
        first, last, pronoun = people[0]
        blocks[0].append(
            (
                rng.choice(
                    (
                        f"Later {first} moved to {cities[4]}.",
                        f"Later {pronoun} moved to {cities[4]}.",
                        f"{first} {last} now lives in {cities[4]}.",
                    )
                ),
                [
                    (f"Where does {first} {last} live now?", [cities[4]]),
                    (f"Which city did {last} move to?", [cities[4]]),
                ],
            )
        )
    founder = f"{people[2][0]} {people[2][1]}"
    company = companies[rng.randrange(2)]
    product = products[0]
    blocks.append(
        [
            (
                rng.choice(
                    (
                        f"{company} was founded by {founder} in {cities[2]} in {years[2]}.",
                        f"In {years[2]}, {founder} founded {company} in {cities[2]}.",
                    )
                ),
                [
                    (f"Who founded {company}?", [founder, people[2][1]]),
                    (f"When was {company} founded?", [str(years[2])]),
                    (f"In which city was {company} founded?", [cities[2]]),
                ],
            )
        ]
    )
    blocks.append(
        [
            (
                f"{company} makes {product} and has an office in {cities[3]}.",
                [
                    (f"What does {company} make?", [product]),
                    (f"Where does {company} have an office?", [cities[3]]),
                ],
            )
        ]
    )
    if rng.random() < 0.5:  # a fact no question asks about
        blocks.append([(f"{cities[3]} is known for its {products[1]}.", [])])
    rng.shuffle(blocks)
    facts = [fact for block in blocks for fact in block]
    text = " ".join(sentence for sentence, _ in facts)
    questions = [q for _, qs in facts for q in qs]
    return text, questions


@register_generator("qa")
def qa_rows(options: dict[str, Any]) -> Rows:
    """Passages of facts with one question each: `context`, `question`, `answers` (the gold
    answer texts, each a span of the context) and `answer_starts` (their character offsets).

    Options: `split` ("examples": 20 public rows; "train": 4,000; "heldout": 2,000, each
    from its own seed), `n` (keep the first n rows).
    """
    opts = _options(options, {"split": "heldout", "n": None}, "qa")
    split = opts["split"]
    if split not in QA_SPLITS:
        raise DatasetError(f"generator 'qa': split must be one of {', '.join(QA_SPLITS)}")
    seed, size = QA_SPLITS[split]
    if opts["n"] is not None:
        size = min(size, int(opts["n"]))
    rng = random.Random(seed)
    rows: Rows = []
    for i in range(size):
        context, questions = _passage(rng)
        question, answers = rng.choice(questions)
        starts = []
        for answer in answers:
            start = _span_start(context, question, answer)
            starts.append(start)
        rows.append(
            {
                "uid": f"qa-{split}-{i:05d}",
                "context": context,
                "question": question,
                "answers": answers,
                "answer_starts": starts,
            }
        )
    return rows


def _span_start(context: str, question: str, answer: str) -> int:
    """Where `answer` stands in `context`: the occurrence in the sentence the question is
    about (the one sharing most words with it), as a whole-word match."""
    words = set(re.findall(r"\w+", question.lower()))
    best, best_overlap = -1, -1
    for match in re.finditer(rf"(?<!\w){re.escape(answer)}(?!\w)", context):
        left = context.rfind(". ", 0, match.start())
        right = context.find(". ", match.end())
        sentence = context[left + 1 : right if right >= 0 else len(context)]
        overlap = len(words & set(re.findall(r"\w+", sentence.lower())))
        if overlap > best_overlap:
            best, best_overlap = match.start(), overlap
    if best < 0:
        raise DatasetError(f"generator 'qa': answer {answer!r} is not a span of its passage")
    return best
