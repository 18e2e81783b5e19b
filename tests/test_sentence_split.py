"""The sentence rule `vaswani-translate` splits long lines with: where it splits, and where it must not."""

import pytest

from vaswani.modeling.sentence_split import split_sentences


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("Jesus wept. And God said, Let there be light! Was it good? It was.",
         ["Jesus wept.", "And God said, Let there be light!", "Was it good?", "It was."]),
        ('He said "Go." Then he left.', ['He said "Go."', "Then he left."]),
        ("Lloró. ¿Por qué? ¡Porque sí!", ["Lloró.", "¿Por qué?", "¡Porque sí!"]),
        ("Chapter 3 ends here. 4 more follow.", ["Chapter 3 ends here.", "4 more follow."]),
        ("Il pleure… Puis il part.", ["Il pleure…", "Puis il part."]),
        ("天地創造。光あれ！", ["天地創造。", "光あれ！"]),
        ("One sentence, no end", ["One sentence, no end"]),
        ("  Spaces around.   Are dropped.  ", ["Spaces around.", "Are dropped."]),
    ],
)  # fmt: skip
def test_splits_at_sentence_ends(text, sentences):
    assert split_sentences(text) == sentences


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith met Dr. Jones.",  # titles
        "J. R. R. Tolkien wrote it.",  # initials
        "The U.S. Army and e.g. Navy.",  # dotted abbreviations
        "It costs 3.50 dollars.",  # a decimal point
        "He paused. then went on.",  # no sentence start after the full stop
    ],
)
def test_abbreviations_numbers_and_lower_case_do_not_end_a_sentence(text):
    assert split_sentences(text) == [text]


def test_nothing_is_lost_or_reordered():
    text = "First one.  Second (two)! «Third» three? [Fourth] 4. Fifth"
    assert " ".join(split_sentences(text)).split() == text.split()
    assert split_sentences("") == []
