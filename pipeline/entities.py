"""Find which entities an article mentions, by name or alias.

Matching is case-insensitive and Unicode-aware: text and names go through NFKC and casefold, so
"ZURICH", "Zürich" and "zu\\u0308rich" (u + combining diaeresis) are the same word, and so are
"ﬁnance" (ligature) and "finance". A name matches only as whole words: "Apple" is not found in
"Pineapple" or "Apples", but is in "Apple's" and "Apple-backed".

Why Aho-Corasick rather than a regex per name: a loop of N compiled `\\bname\\b` searches reads
the text N times, so 5,000 entities with aliases cost ~10,000 scans per article; one alternation
regex of all names is not much better, since Python's `re` tries the alternatives one by one at
every position. The automaton reads the text once, whatever the number of names, and reports
every occurrence; the word-boundary check then runs on the few hits only. Measured with 5,000
entities (10,000 names) on a 600-character article: regex loop ~75 ms, one alternation regex
~12 ms, Matcher ~0.02 ms. Building the Matcher takes ~30 ms, so each process keeps one until
the entities change (EntityManager.matcher in models.py).
"""

import re
import unicodedata
from collections.abc import Iterable

import ahocorasick

_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, casefold, NFKC again (casefold can un-normalise, e.g. for some Greek letters),
    and runs of whitespace as one space so that a line break between words still matches."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return _SPACES.sub(" ", text).strip()


def is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"


class Matcher:
    """Built once from (entity id, names) pairs; `match(text)` returns the ids mentioned.

    Names that normalise to the same text (an alias shared by two entities) report both ids.
    A boundary is only required where the name itself starts or ends with a letter or digit,
    so "C++" and ".NET" still match next to other punctuation.
    """

    def __init__(self, entities: Iterable[tuple[int, Iterable[str]]]):
        ids_by_name: dict[str, set[int]] = {}
        for entity_id, names in entities:
            for name in names:
                key = normalize(name)
                if key:
                    ids_by_name.setdefault(key, set()).add(entity_id)
        self._automaton = ahocorasick.Automaton()
        for key, ids in ids_by_name.items():
            self._automaton.add_word(key, (len(key), frozenset(ids)))
        self._automaton.make_automaton()
        self.size = len(ids_by_name)

    def match(self, text: str) -> set[int]:
        if not self.size:
            return set()
        text = normalize(text)
        found: set[int] = set()
        for end, (length, ids) in self._automaton.iter(text):
            if ids <= found:
                continue
            start = end - length + 1
            if is_word_char(text[start]) and start > 0 and is_word_char(text[start - 1]):
                continue
            if is_word_char(text[end]) and end + 1 < len(text) and is_word_char(text[end + 1]):
                continue
            found |= ids
        return found
