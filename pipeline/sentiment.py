"""Sentiment of a text with VADER: a compound score from -1 (negative) to 1 (positive).

VADER is a lexicon and rules, tuned for short social-media and headline text: no model to
download, about 50 microseconds per headline, deterministic.
"""

import functools
from typing import Literal

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

# VADER's own recommended cut-offs for the compound score (Hutto & Gilbert, 2014; README of
# cjhutto/vaderSentiment): >= 0.05 positive, <= -0.05 negative, anything between neutral.
POSITIVE_THRESHOLD = 0.05
NEGATIVE_THRESHOLD = -0.05

Label = Literal["positive", "negative", "neutral"]


@functools.cache
def get_analyzer() -> SentimentIntensityAnalyzer:
    # Built on first use, not at import: loading the lexicon takes ~25 ms and the web process
    # imports this module without ever scoring anything.
    return SentimentIntensityAnalyzer()


def score_text(text: str) -> float:
    """The VADER compound score of `text`; 0.0 for an empty or blank text."""
    if not text.strip():
        return 0.0
    return get_analyzer().polarity_scores(text)["compound"]


def classify(score: float) -> Label:
    if score >= POSITIVE_THRESHOLD:
        return "positive"
    if score <= NEGATIVE_THRESHOLD:
        return "negative"
    return "neutral"
