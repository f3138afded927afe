"""Amharic normaliser: number words over the full range, Ethiopic numerals, real sentences."""

from __future__ import annotations

import pytest

from utils.language.amharic import (
    normalize_amharic,
    number_to_words,
    ordinal_to_words,
    parse_ethiopic_numeral,
)
from utils.language.basic import normalize_basic
from utils.language.registry import normalize_text


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "ዜሮ"),
        (7, "ሰባት"),
        (11, "አሥራ አንድ"),
        (19, "አሥራ ዘጠኝ"),
        (25, "ሃያ አምስት"),
        (90, "ዘጠና"),
        (100, "መቶ"),
        (101, "መቶ አንድ"),
        (342, "ሦስት መቶ አርባ ሁለት"),
        (1000, "አንድ ሺህ"),
        (1999, "አንድ ሺህ ዘጠኝ መቶ ዘጠና ዘጠኝ"),  # num2words(lang="am") raises here
        (2015, "ሁለት ሺህ አሥራ አምስት"),
        (100000, "መቶ ሺህ"),
        (2500000, "ሁለት ሚሊዮን አምስት መቶ ሺህ"),
        (3_000_000_007, "ሦስት ቢሊዮን ሰባት"),
        (10**12, "አንድ ትሪሊዮን"),
    ],
)
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_number_to_words_covers_the_range_without_gaps():
    # every value in a sweep gives words made only of known number words, and distinct values differ
    known = set(
        "ዜሮ አንድ ሁለት ሦስት አራት አምስት ስድስት ሰባት ስምንት ዘጠኝ አሥር አሥራ ሃያ ሠላሳ አርባ ሃምሳ ስድሳ ሰባ ሰማንያ ዘጠና መቶ ሺህ ሚሊዮን ቢሊዮን ትሪሊዮን".split()
    )
    values = list(range(2100)) + [10**k + j for k in range(4, 15) for j in (-1, 0, 1)]
    seen = {}
    for n in values:
        words = number_to_words(n)
        assert set(words.split()) <= known, (n, words)
        seen.setdefault(words, n)
    assert len(seen) == len(set(values))
    with pytest.raises(ValueError):
        number_to_words(10**15)


@pytest.mark.parametrize(
    "n, words", [(1, "አንደኛ"), (2, "ሁለተኛ"), (5, "አምስተኛ"), (9, "ዘጠነኛ"), (10, "አሥረኛ"), (20, "ሃያኛ"), (21, "ሃያ አንደኛ")]
)
def test_ordinals(n, words):
    assert ordinal_to_words(n) == words


@pytest.mark.parametrize(
    "numeral, value",
    [
        ("፩", 1),
        ("፱", 9),
        ("፲", 10),
        ("፲፫", 13),
        ("፺፱", 99),
        ("፻", 100),
        ("፻፩", 101),
        ("፪፻", 200),
        ("፲፻", 1000),
        ("፲፱፻፺፩", 1991),
        ("፳፻፲፭", 2015),
        ("፼", 10000),
        ("፻፼", 1_000_000),
        ("፩፼፳፫፻፵፭፼፷፯፻፹፱", 123_456_789),
    ],
)
def test_ethiopic_numerals(numeral, value):
    assert parse_ethiopic_numeral(numeral) == value


def test_ethiopic_numeral_rejects_other_characters():
    with pytest.raises(ValueError):
        parse_ethiopic_numeral("፲a")


@pytest.mark.parametrize(
    "raw, expected",
    [
        (
            "በ2015 ዓ.ም 5ኛ ክፍል ተማሪዎች 1,250 ብር ከፍለዋል።",
            "በሁለት ሺህ አሥራ አምስት ዓመተ ምሕረት አምስተኛ ክፍል ተማሪዎች አንድ ሺህ ሁለት መቶ ሃምሳ ብር ከፍለዋል.",
        ),
        (
            "ዶ/ር አበበ በአ.አ ት/ቤት ውስጥ 3.5 ሰዓት አስተማሩ፤ 50% ተማሪዎች ተገኝተዋል።",
            "ዶክተር አበበ በአዲስ አበባ ትምህርት ቤት ውስጥ ሦስት ነጥብ አምስት ሰዓት አስተማሩ; ሃምሳ በመቶ ተማሪዎች ተገኝተዋል.",
        ),
        (
            "ወ/ሮ አልማዝ ገ/ሚካኤል በ፲፱፻፺፩ ዓ.ም ተወለዱ፡፡",
            "ወይዘሮ አልማዝ ገብረ ሚካኤል በአንድ ሺህ ዘጠኝ መቶ ዘጠና አንድ ዓመተ ምሕረት ተወለዱ.",
        ),
        ("ሰላም፡ዓለም፣ እንዴት ነህ፧ «ጤና» ይስጥልኝ፥ ፨", "ሰላም ዓለም, እንዴት ነህ? ጤና ይስጥልኝ:."),
        ("ዋጋው 25ብር ነው።", "ዋጋው ሃያ አምስት ብር ነው."),
        ("ኢትዮጵያ ፲፫ ወራት አሏት።", "ኢትዮጵያ አሥራ ሦስት ወራት አሏት."),
        ("ከተማዋ 3 ሚሊዮን ነዋሪዎች አሏት።", "ከተማዋ ሦስት ሚሊዮን ነዋሪዎች አሏት."),
        ("ስልኩ 0911 ነው።", "ስልኩ ዜሮ ዘጠኝ አንድ አንድ ነው."),  # leading zero: digit by digit
    ],
)
def test_normalize_real_sentences(raw, expected):
    assert normalize_amharic(raw) == expected
    assert normalize_text(raw, "am") == expected


def test_latin_words_take_the_english_path():
    # Latin words are lower-cased and read by Coqui's English cleaners; Ge'ez around them is untouched
    assert normalize_amharic("የ Mr. Smith ስልክ iPhone ነው።") == "የ mister smith ስልክ iphone ነው."


def test_whitespace_and_every_ethiopic_mark_mapped():
    out = normalize_amharic("  ሀ፡ለ  ።\tሐ፣መ፤ሠ፥ረ፦ሰ፧ሸ፨  ")
    assert out == "ሀ ለ. ሐ,መ;ሠ:ረ:ሰ?ሸ."
    assert not any(0x1360 <= ord(c) <= 0x137C for c in out)


def test_basic_normaliser_for_other_codes():
    assert normalize_basic("  Habari “Yako”  Dunia !", "sw") == "habari yako dunia!"
    assert normalize_basic("Привет 25", "uk") == "привет двадцять п'ять"  # num2words knows Ukrainian
    assert normalize_basic("ሰላም 25", "ti") == "ሰላም 25"  # no num2words for Tigrinya: digits stay
    assert normalize_text("Привет 25", "uk") == "привет двадцять п'ять"


def test_normalize_text_keeps_coqui_for_xtts_languages():
    assert normalize_text("Hello Dr. Smith, 25 apples.", "en") == "hello doctor smith, twenty-five apples."
