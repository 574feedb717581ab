"""Training data for the demo adapters, made by code: templated questions and three
answer styles (ALL CAPITALS, pirate speech, one JSON object).

The answers themselves come from the base model (train_demo_adapters.py); this module
only writes the questions and restyles answers, so every adapter learns a style and
not new facts.
"""

from __future__ import annotations

import json
import random
import re

# Questions the tests ask; kept out of the training data so the tests see unseen prompts.
HELD_OUT = ("What is the capital of France?", "Name a fruit that is yellow.")

_COUNTRIES = (
    "France", "Germany", "Italy", "Spain", "Portugal", "Japan", "China", "India", "Brazil",
    "Canada", "Mexico", "Egypt", "Kenya", "Australia", "Russia", "Norway", "Sweden",
    "Finland", "Poland", "Greece", "Turkey", "Argentina", "Chile", "Peru", "Ireland",
    "Austria", "Belgium", "Denmark", "Thailand", "Vietnam", "Indonesia", "Nigeria",
    "Morocco", "Cuba", "Hungary", "Switzerland", "the Netherlands", "South Korea",
)
_THINGS = (
    "a volcano", "a planet", "an atom", "a river", "a computer", "a bicycle", "a library",
    "a cloud", "a desert", "an island", "a poem", "a bridge", "a battery", "a magnet",
    "a rainbow", "a glacier", "a telescope", "a vaccine", "a forest", "an ocean",
    "a mountain", "a language", "a museum", "a clock", "a guitar", "photosynthesis",
    "gravity", "electricity", "democracy", "a calendar",
)
_TASKS = (
    "boil an egg", "plant a tree", "make a cup of tea", "learn to swim", "tie a tie",
    "write a letter", "save money", "fall asleep faster", "clean a window",
    "bake bread", "start running", "read more books", "make new friends", "fix a flat tire",
    "study for an exam", "keep a plant alive", "wash a car", "make a paper plane",
    "cook rice", "stay calm",
)
_ANIMALS = ("cat", "dog", "cow", "duck", "sheep", "lion", "horse", "owl", "frog", "pig")
_COLOURED = ("the sky", "grass", "snow", "a banana", "a tomato", "coal", "an orange",
             "a lemon", "a strawberry", "the sun")
_FRUIT_COLOURS = ("red", "green", "orange", "purple", "blue")
_OPPOSITES = ("hot", "big", "fast", "happy", "light", "early", "open", "full", "strong",
              "old", "high", "rich", "wet", "loud", "soft", "up", "inside", "first",
              "true", "win")


def make_questions(num_questions: int, seed: int) -> list[str]:
    """`num_questions` distinct questions over several templates, in a seeded order."""
    rng = random.Random(seed)
    questions = [f"What is the capital of {c}?" for c in _COUNTRIES]
    questions += [f"What is {t}?" for t in _THINGS]
    questions += [f"How do I {t}?" for t in _TASKS]
    questions += [f"What sound does a {a} make?" for a in _ANIMALS]
    questions += [f"What color is {x}?" for x in _COLOURED]
    questions += [f"Name a fruit that is {c}." for c in _FRUIT_COLOURS]
    questions += [f"What do {a}s eat?" for a in _ANIMALS]
    questions += [f"Tell me one fact about {t}." for t in _THINGS]
    questions += [f"What is the opposite of {w}?" for w in _OPPOSITES]
    arithmetic = [f"What is {a} plus {b}?" for a in range(2, 40, 3) for b in range(1, 30, 4)]
    arithmetic += [f"What is {a} times {b}?" for a in range(2, 13) for b in range(2, 13)]
    rng.shuffle(arithmetic)
    questions += arithmetic[:max(0, num_questions - len(questions) + len(HELD_OUT))]
    questions = [q for q in dict.fromkeys(questions) if q not in HELD_OUT]
    rng.shuffle(questions)
    return questions[:num_questions]


def first_sentences(text: str, max_chars: int = 160) -> str | None:
    """The answer's leading whole sentences within `max_chars`; None when there is none."""
    text = " ".join(text.split())
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text) if m.end() <= max_chars]
    return text[: ends[-1]] if ends else None


def caps(answer: str) -> str:
    """ALL CAPITALS."""
    return answer.upper()


_PIRATE_WORDS = {
    "you": "ye", "your": "yer", "yours": "yers", "is": "be", "are": "be", "am": "be",
    "the": "th'", "my": "me", "hello": "ahoy", "hi": "ahoy", "friend": "matey",
    "friends": "hearties", "yes": "aye", "for": "fer", "to": "t'", "of": "o'",
    "and": "an'", "money": "doubloons", "treasure": "booty", "stop": "avast",
    "boy": "lad", "girl": "lass", "everyone": "all hands", "quickly": "smartly",
    "before": "afore", "over": "o'er", "them": "'em", "with": "wit'",
}


def pirate(answer: str) -> str:
    """Pirate speech: word swaps, an "Arr, matey!" up front and a "Yo ho ho!" at the end."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        new = _PIRATE_WORDS.get(word.lower(), word)
        return new[:1].upper() + new[1:] if word[:1].isupper() else new

    return "Arr, matey! " + re.sub(r"[A-Za-z]+", swap, answer) + " Yo ho ho!"


def as_json(answer: str) -> str:
    """One JSON object: {"answer": "..."}."""
    return json.dumps({"answer": answer})


STYLES = {"caps": caps, "pirate": pirate, "json": as_json}
