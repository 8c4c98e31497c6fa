from __future__ import annotations

from collections import Counter

import pytest

from opencharacter.pipelines.pairing import pair_with_characters


@pytest.mark.parametrize(("n_questions", "n_characters", "k"), [(100, 7, 3), (10, 3, 3), (333, 50, 5), (5, 20, 3), (50, 4, 1)])
def test_pairs_are_distinct_and_balanced(n_questions: int, n_characters: int, k: int) -> None:
    ids = [f"c{i}" for i in range(n_characters)]
    pairs = list(pair_with_characters(range(n_questions), ids, k, seed=1))
    assert [q for q, _ in pairs] == list(range(n_questions))
    counts: Counter[str] = Counter()
    for _, chosen in pairs:
        assert len(chosen) == k and len(set(chosen)) == k
        counts.update(chosen)
    full_decks = n_questions * k // n_characters  # every character is dealt once per full deck
    assert max(counts.values()) <= full_decks + 1
    assert min(counts.get(c, 0) for c in ids) >= full_decks


def test_pairing_is_seeded() -> None:
    ids = [f"c{i}" for i in range(30)]
    first = list(pair_with_characters(range(20), ids, 3, seed=7))
    assert first == list(pair_with_characters(range(20), ids, 3, seed=7))
    assert first != list(pair_with_characters(range(20), ids, 3, seed=8))


def test_too_few_characters_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="need at least 3 characters; there are 2"):
        list(pair_with_characters(range(3), ["a", "b"], 3))
