from pipeline.entities import Matcher, normalize

APPLE, ZURICH, UK, JORDAN_COUNTRY, MICHAEL_JORDAN, NEW_YORK, NYT, CPP, US = range(1, 10)

MATCHER = Matcher(
    [
        (APPLE, ["Apple", "Apple Inc."]),
        (ZURICH, ["Zürich"]),
        (UK, ["United Kingdom", "Britain", "U.K."]),
        (JORDAN_COUNTRY, ["Jordan"]),
        (MICHAEL_JORDAN, ["Michael Jordan", "Jordan"]),
        (NEW_YORK, ["New York"]),
        (NYT, ["New York Times"]),
        (CPP, ["C++"]),
        (US, ["U.S."]),
    ]
)


def test_name_matches_whatever_its_case():
    assert MATCHER.match("APPLE unveils a phone") == {APPLE}
    assert MATCHER.match("shares of apple fell") == {APPLE}


def test_name_does_not_match_inside_a_longer_word():
    assert MATCHER.match("Pineapple and apples and snapple") == set()


def test_name_matches_next_to_punctuation():
    for text in ["Apple's results", "(Apple)", "an Apple-backed fund", "sold: Apple."]:
        assert MATCHER.match(text) == {APPLE}, text


def test_alias_matches_its_entity():
    assert MATCHER.match("Rain again in Britain") == {UK}
    assert MATCHER.match("the U.K. economy") == {UK}


def test_accented_name_matches_uppercase_and_decomposed_spellings():
    assert MATCHER.match("Snow in ZÜRICH") == {ZURICH}
    assert MATCHER.match("Snow in zu\u0308rich") == {ZURICH}  # u + combining diaeresis


def test_accents_are_not_folded_so_an_unaccented_spelling_needs_an_alias():
    assert MATCHER.match("Snow in ZURICH") == set()
    with_alias = Matcher([(ZURICH, ["Zürich", "Zurich"])])
    assert with_alias.match("Snow in ZURICH") == {ZURICH}


def test_compatibility_characters_match_their_plain_letters():
    fullwidth_apple = "\uff21\uff30\uff30\uff2c\uff25"
    assert MATCHER.match(f"{fullwidth_apple} news") == {APPLE}
    assert Matcher([(1, ["Fiji"])]).match("\ufb01ji votes") == {1}  # "fi" ligature


def test_multi_word_name_matches_across_a_line_break():
    assert MATCHER.match("the United\n  Kingdom") == {UK}


def test_alias_shared_by_two_entities_reports_both():
    assert MATCHER.match("Jordan scores") == {JORDAN_COUNTRY, MICHAEL_JORDAN}


def test_overlapping_names_both_match():
    assert MATCHER.match("read the New York Times") == {NEW_YORK, NYT}


def test_name_ending_in_punctuation_needs_no_boundary_after_it():
    assert MATCHER.match("written in C++, fast") == {CPP}
    assert MATCHER.match("the U.S.-China talks") == {US}


def test_dotted_abbreviation_does_not_match_the_plain_word():
    assert MATCHER.match("join us today") == set()


def test_matcher_without_names_matches_nothing():
    assert Matcher([]).match("Apple") == set()
    assert Matcher([(1, ["", "   "])]).match("Apple") == set()


def test_normalize_casefolds_composes_and_collapses_spaces():
    assert normalize("  Stra\u00dfe\tZu\u0308rich\n") == "strasse zürich"
