"""Pair each question with k distinct characters, seeded and balanced.

Characters are dealt from successive shuffled decks, so after any number of questions every
character has been dealt the same number of times, give or take one: no character gets more than
one question above its fair share. Only the current deck is held, so questions stream.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

Q = TypeVar("Q")


def pair_with_characters(questions: Iterable[Q], character_ids: Sequence[str], k: int, seed: int = 0) -> Iterator[tuple[Q, list[str]]]:
    n = len(character_ids)
    if k < 1:
        raise ValueError("characters per question must be at least 1")
    if n < k:
        raise ValueError(f"{k} characters per question need at least {k} characters; there are {n}")
    rng = random.Random(seed)
    deck: list[int] = []
    pos = 0
    for question in questions:
        chosen: list[int] = []
        while len(chosen) < k:
            if pos == len(deck):
                deck = list(range(n))
                rng.shuffle(deck)
                pos = 0
            if deck[pos] in chosen:  # only at a deck boundary: take a later card of the new deck
                swap = next(j for j in range(pos + 1, n) if deck[j] not in chosen)
                deck[pos], deck[swap] = deck[swap], deck[pos]
            chosen.append(deck[pos])
            pos += 1
        yield question, [character_ids[i] for i in chosen]
