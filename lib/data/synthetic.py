"""An offline synthetic QA generator (`synthetic_qa`, the "synthetic" data set): a pipeline check only.

Generated from a local `random.Random(seed)`. Each passage: 60-150 words of neutral filler (no
names, digits or colours) with exactly one fact sentence at a random position. The answer (1-4
words) occurs once in the passage (case-insensitive) and never in the query; entities are made-up
syllable names. Passages and keywords contain the answer: never a finding.
"""
from __future__ import annotations

import random
from typing import Iterator

from lib.data.schema import Sample, _check_int, _n_words

# Each passage: 60-150 words of neutral filler (no names, digits or colours) with exactly one
# fact sentence at a random position. The answer (1-4 words) occurs once in the passage
# (case-insensitive) and never in the query; entities are made-up syllable names.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "st", "tr", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "n", "r", "l", "s", "m", "nd", "rk", "sk")
_COMPANY_KINDS = ("Works", "Holdings", "Textiles", "Foundry", "Mills", "Shipping")
_BUILDINGS = ("library", "observatory", "theatre", "museum", "railway station", "market hall")
_COLOURS = ("crimson", "amber", "teal", "violet", "ochre", "silver", "indigo", "scarlet",
            "olive", "ivory", "saffron", "cobalt")
_FILLER = (
    "The weather in the region tends to change quickly in the early afternoon.",
    "Many visitors arrive in spring, when the roads are dry and the evenings are long.",
    "Local residents often meet on the green to trade news and small goods.",
    "A narrow path winds along the hills and offers a quiet view of the valley.",
    "Most of the older houses were built from stone that was carried in by cart.",
    "In winter the fields are covered with frost for several weeks at a time.",
    "The surrounding forests are home to deer, foxes and a great many birds.",
    "Travellers usually stop for tea before continuing along the coastal road.",
    "Schools in the area close for a short holiday at the end of the harvest.",
    "Several small bridges cross the streams that run down from the uplands.",
    "The local dialect has a few words that outsiders rarely understand.",
    "On clear nights the stars can be seen far more brightly than in the cities.",
    "Fishing boats leave the harbour before dawn and return by midday.",
    "Farmers in the district grow barley, potatoes and a little fruit.",
    "The post arrives twice a week, carried by a van from the nearest depot.",
    "A small bakery on the main street is known for its bread and pastries.",
    "Walkers are advised to carry water, since the trails have few springs.",
    "Much of the land is used for grazing sheep and a few herds of cattle.",
    "The council meets once a month to discuss roads, drains and lighting.",
    "Old photographs of the streets hang in the waiting room of the clinic.",
    "There is a modest park with benches, a pond and a row of tall trees.",
    "During festivals the square fills with music, stalls and dancing.",
    "The soil here is thin and rocky, which makes farming slow work.",
    "Children often play by the water while their parents sit in the shade.",
    "A bus connects the outlying villages with the larger towns to the south.",
    "The nearby hills are popular with painters who come for the light.",
    "Storms sometimes damage the roofs, and repairs can take many days.",
    "Most shops close early on the last afternoon of the working week.",
    "The old mill wheel no longer turns, but people still visit it.",
    "Wild flowers cover the meadows for a few weeks in early summer.",
    "Few cars pass along the lanes after dark, and the nights are quiet.",
    "The main road was widened some time ago to allow larger lorries through.",
    "A volunteer group looks after the footpaths and clears fallen branches.",
    "Visitors often remark on how friendly and patient the shopkeepers are.",
    "A travelling cart lends books to the farms that lie far from the roads.",
    "Rain falls most heavily in autumn, and the rivers rise for a while.",
)
_MAX_FILLER_WORDS = max(_n_words(s) for s in _FILLER)
# name, fact sentence, query, answer key ({...} fields come from _synthetic_entities)
_TEMPLATES = (
    ("founder", "{company} was founded by {person}.", "Who founded {company}?", "person"),
    ("river", "The {river} flows through the town of {town}.",
     "Which river flows through the town of {town}?", "river"),
    ("opened", "The {building} in {town} opened in {year}.",
     "In what year did the {building} in {town} open?", "year"),
    ("flag", "The flag of {town} is {colours}.", "What colours are on the flag of {town}?",
     "colours"),
    ("mayor", "The mayor of {town} is {person}.", "Who is the mayor of {town}?", "person"),
    ("headquarters", "{company} has its headquarters in {town}.",
     "In which town does {company} have its headquarters?", "town"),
    ("height", "{mountain} rises {height} above the sea.", "How high is {mountain}?", "height"),
    ("pet", "{person} owns a dog named {pet}.", "What is the name of {person}'s dog?", "pet"),
    ("inventor", "The {device} was invented by {person}.", "Who invented the {device}?",
     "person"),
)


def _made_up_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables)).capitalize()


def _synthetic_entities(rng: random.Random) -> dict[str, str]:
    word = lambda: _made_up_word(rng, rng.randint(2, 3))  # noqa: E731
    colours = rng.sample(_COLOURS, 2)
    return {"person": f"{word()} {word()}", "company": f"{word()} {rng.choice(_COMPANY_KINDS)}",
            "town": word(), "river": f"{word()} River", "mountain": f"Mount {word()}",
            "building": rng.choice(_BUILDINGS), "year": str(rng.randint(1650, 1990)),
            "colours": f"{colours[0]} and {colours[1]}", "pet": word(),
            "height": f"{rng.randint(800, 4800):,} metres", "device": f"{word()} lamp"}


def _synthetic_sample(rng: random.Random, seed: int, index: int) -> Sample:
    name, fact_fmt, query_fmt, key = rng.choice(_TEMPLATES)
    target = rng.randint(60, 151 - _MAX_FILLER_WORDS)  # final length stays within 60-150
    order = rng.sample(range(len(_FILLER)), len(_FILLER))
    for _ in range(100):  # redraw names until the answer occurs exactly once
        ent = _synthetic_entities(rng)
        fact, query, answer = fact_fmt.format(**ent), query_fmt.format(**ent), ent[key]
        filler, words = [], _n_words(fact)
        for i in order:
            if words >= target:
                break
            filler.append(_FILLER[i])
            words += _n_words(_FILLER[i])
        position = rng.randint(0, len(filler))
        passage = " ".join(filler[:position] + [fact] + filler[position:])
        if passage.lower().count(answer.lower()) == 1 and answer.lower() not in query.lower():
            return Sample(id=f"synth-{seed}-{index}", query=query, passage=passage, answer=answer,
                          answers=(answer,), meta={"dataset": "synthetic", "split": "generated",
                                                   "row": index, "truncated": False,
                                                   "template": name, "seed": seed,
                                                   "fact_sentence": position})
    raise RuntimeError(f"synthetic sample {index} (seed {seed}): no unique answer in 100 draws")


def _synthetic_stream(seed: int, limit: int) -> Iterator[Sample]:
    rng = random.Random(seed)
    for index in range(limit):
        yield _synthetic_sample(rng, seed, index)


def synthetic_qa(n: int, seed: int = 42) -> list[Sample]:
    """`n` fictional-fact samples, ids "synth-<seed>-<i>". Same seed -> identical samples, and
    the first k of n are the samples for n=k. Uses a local random.Random(seed) only."""
    _check_int("n", n, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return list(_synthetic_stream(seed, limit=n))
