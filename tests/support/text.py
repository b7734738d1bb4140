"""Text the tests make: deterministic pseudo-English words, so that a test's corpus never depends
on the project's own files or on what the Python installation ships."""

from __future__ import annotations

import random

SYLLABLES = ["ka", "lo", "mi", "ren", "tu", "sha", "vor", "el", "din", "qua", "be", "ost", "ni", "fal"]


def words(nbytes: int, seed: int = 0) -> str:
    """Exactly ``nbytes`` ASCII characters of sentences made of invented words."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(400)]
    parts, size = [], 0
    while size < nbytes:
        sentence = " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 14))).capitalize() + ".\n"
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)[:nbytes]
