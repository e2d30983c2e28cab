import pytest

from pipeline.sentiment import classify, get_analyzer, score_text


def test_clearly_positive_text_scores_positive():
    assert score_text("A wonderful, hopeful success that delighted everyone") > 0.5


def test_clearly_negative_text_scores_negative():
    assert score_text("A terrible disaster killed dozens and left families devastated") < -0.5


def test_text_without_sentiment_words_scores_zero():
    assert score_text("The committee meets on Tuesday at noon") == 0.0


def test_blank_text_scores_zero():
    assert score_text("") == 0.0
    assert score_text("  \n ") == 0.0


def test_negation_flips_the_sign():
    assert score_text("The launch was good") > 0
    assert score_text("The launch was not good") < 0


@pytest.mark.parametrize(
    ("score", "label"),
    [
        (1.0, "positive"),
        (0.05, "positive"),
        (0.0499, "neutral"),
        (0.0, "neutral"),
        (-0.0499, "neutral"),
        (-0.05, "negative"),
        (-1.0, "negative"),
    ],
)
def test_classification_uses_vader_thresholds_of_plus_minus_0_05(score, label):
    assert classify(score) == label


def test_analyzer_is_built_once_and_reused():
    assert get_analyzer() is get_analyzer()
