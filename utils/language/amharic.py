"""Amharic text normaliser: numbers, Ethiopic numerals, abbreviations, punctuation, whitespace.

XTTS v2 has no Amharic, and ``num2words(lang="am")`` covers only part of the range (1999 raises,
millions come out garbled), so number words are built here for 0 .. 10**15 - 1.

What the model sees after :func:`normalize_amharic`:
- Arabic digits and Ethiopic numerals (U+1369-U+137C) become Amharic number words; ``5ኛ`` becomes
  the ordinal ``አምስተኛ``, ``3.5`` ``ሦስት ነጥብ አምስት``, ``50%`` ``ሃምሳ በመቶ``.
- Common abbreviations are expanded (``ዓ.ም`` -> ``ዓመተ ምሕረት``, ``ት/ቤት`` -> ``ትምህርት ቤት``, ...).
- Ethiopic punctuation is mapped to the ASCII marks the base vocabulary already has
  (``፡`` word space -> space, ``።`` -> ``.``, ``፣`` -> ``,``, ``፤`` -> ``;``, ``፥``/``፦`` -> ``:``,
  ``፧`` -> ``?``, ``፨`` -> ``.``).
- Words written in Latin letters go through the English path (Coqui's English cleaners:
  lower case, English numbers and abbreviations).
- Whitespace is collapsed; quotes are dropped (Coqui's cleaners drop ``"`` too).
"""

from __future__ import annotations

import logging
import re
import unicodedata

logger = logging.getLogger(__name__)

UNITS = ("", "አንድ", "ሁለት", "ሦስት", "አራት", "አምስት", "ስድስት", "ሰባት", "ስምንት", "ዘጠኝ")
TENS = ("", "አሥር", "ሃያ", "ሠላሳ", "አርባ", "ሃምሳ", "ስድሳ", "ሰባ", "ሰማንያ", "ዘጠና")
ZERO = "ዜሮ"
HUNDRED = "መቶ"
# (value, word), largest first; 10**3 .. 10**12
SCALES = ((10**12, "ትሪሊዮን"), (10**9, "ቢሊዮን"), (10**6, "ሚሊዮን"), (10**3, "ሺህ"))
MAX_NUMBER = 10**15 - 1
POINT = "ነጥብ"
PERCENT = "በመቶ"

# Ethiopic punctuation (U+1360-U+1368) -> what the model sees.
PUNCTUATION = {
    "\u1360": " ",  # ፠ section mark
    "\u1361": " ",  # ፡ word space
    "\u1362": ".",  # ። full stop
    "\u1363": ",",  # ፣ comma
    "\u1364": ";",  # ፤ semicolon
    "\u1365": ":",  # ፥ colon
    "\u1366": ":",  # ፦ preface colon
    "\u1367": "?",  # ፧ question mark
    "\u1368": ".",  # ፨ paragraph separator
}
QUOTES = '"«»“”„‘’‹›'

# Whole abbreviations. Written with '.' or '/' (and sometimes a trailing '.'); matched before the
# punctuation map so a sentence-final '።' is never taken for an abbreviation's dot.
ABBREVIATIONS = (
    ("ዓ.ም", "ዓመተ ምሕረት"),
    ("ዓ/ም", "ዓመተ ምሕረት"),
    ("ዓ.ዓ", "ዓመተ ዓለም"),
    ("ት/ቤት", "ትምህርት ቤት"),
    ("ት/ት", "ትምህርት"),
    ("ወ/ሮ", "ወይዘሮ"),
    ("ወ/ት", "ወይዘሪት"),
    ("ዶ/ር", "ዶክተር"),
    ("ፕ/ር", "ፕሮፌሰር"),
    ("ጠ/ሚ", "ጠቅላይ ሚኒስትር"),
    ("ሚ/ር", "ሚኒስትር"),
    ("መ/ቤት", "መሥሪያ ቤት"),
    ("ም/ቤት", "ምክር ቤት"),
    ("ቤ/ክ", "ቤተ ክርስቲያን"),
    ("ቤ/መ", "ቤተ መጻሕፍት"),
    ("ሆ/ል", "ሆስፒታል"),
    ("ክ/ዘ", "ክፍለ ዘመን"),
    ("ክ/ከ", "ክፍለ ከተማ"),
    ("አ.አ", "አዲስ አበባ"),
    ("ኪ.ሜ", "ኪሎ ሜትር"),
    ("ቁ.", "ቁጥር "),
)
# Name prefixes: ገ/ሚካኤል -> ገብረ ሚካኤል, ወ/ማርያም -> ወልደ ማርያም, ኃ/ማርያም -> ኃይለ ማርያም.
NAME_PREFIXES = (("ገ/", "ገብረ "), ("ወ/", "ወልደ "), ("ኃ/", "ኃይለ "), ("ተ/", "ተክለ "), ("ሀ/", "ሀብተ "))

ETHIOPIC_DIGITS = {chr(0x1369 + i): i + 1 for i in range(9)}  # ፩..፱
ETHIOPIC_TENS = {chr(0x1372 + i): (i + 1) * 10 for i in range(9)}  # ፲..፺
ETHIOPIC_HUNDRED = "\u137b"  # ፻
ETHIOPIC_TEN_THOUSAND = "\u137c"  # ፼

_ETHIOPIC_LETTER = r"[\u1200-\u135a\u1380-\u138f\u2d80-\u2ddf\uab00-\uab2f]"
_ETHIOPIC_NUMERAL_RE = re.compile(r"[\u1369-\u137c]+")
_GROUPED_RE = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_PERCENT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_ORDINAL_RE = re.compile(r"(\d+)\s?ኛ")
_DECIMAL_RE = re.compile(r"(\d+)\.(\d+)")
_INTEGER_RE = re.compile(r"\d+")
_LATIN_WORD_RE = re.compile(r"\S*[A-Za-z]\S*")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([.,;:?!])")


def number_to_words(n: int) -> str:
    """Amharic cardinal words for ``0 <= n < 10**15``.

    >>> number_to_words(1999)
    'አንድ ሺህ ዘጠኝ መቶ ዘጠና ዘጠኝ'
    """
    if n < 0 or n > MAX_NUMBER:
        raise ValueError(f"number_to_words handles 0 .. {MAX_NUMBER}, got {n}")
    if n == 0:
        return ZERO
    words: list[str] = []
    for value, name in SCALES:
        count, n = divmod(n, value)
        if count:
            words += [_below_thousand(count), name]
    if n:
        words.append(_below_thousand(n))
    return " ".join(words)


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = []
    if hundreds:
        words.append(HUNDRED if hundreds == 1 else f"{UNITS[hundreds]} {HUNDRED}")
    tens, units = divmod(rest, 10)
    if tens == 1 and units:
        words.append(f"አሥራ {UNITS[units]}")  # 11-19: "ten-and one"
    else:
        if tens:
            words.append(TENS[tens])
        if units:
            words.append(UNITS[units])
    return " ".join(words)


# Sixth-order (vowelless) final letter -> first-order form before the ordinal suffix -ኛ.
_ORDINAL_STEM = {"ድ": "ደ", "ት": "ተ", "ኝ": "ነ", "ር": "ረ", "ን": "ነ"}


def ordinal_to_words(n: int) -> str:
    """Amharic ordinal: 1 -> አንደኛ, 2 -> ሁለተኛ, 9 -> ዘጠነኛ, 20 -> ሃያኛ, 1000 -> አንድ ሺኛ."""
    words = number_to_words(n)
    if words.endswith("ህ"):  # ሺህ -> ሺኛ
        return words[:-1] + "ኛ"
    last = words[-1]
    return words[:-1] + _ORDINAL_STEM.get(last, last) + "ኛ"


def parse_ethiopic_numeral(numeral: str) -> int:
    """Value of an Ethiopic numeral string (U+1369-U+137C).

    Digits (፩..፱) and tens (፲..፺) add up to a value below 100; ፻ multiplies the value before it
    within its group by 100; ፼ multiplies everything before it by 10000. ``፲፱፻፺፩`` is 1991,
    ``፩፼፳፫፻፵፭፼፷፯፻፹፱`` is 123456789.

    Raises:
        ValueError: for a character outside U+1369-U+137C or an empty string.
    """
    if not numeral:
        raise ValueError("empty Ethiopic numeral")
    total = 0  # everything up to the last ፼, already multiplied
    group = 0  # hundreds part of the current ፼ group
    sub = 0  # pending value below 100
    previous = ""
    for ch in numeral:
        if ch in ETHIOPIC_DIGITS:
            sub += ETHIOPIC_DIGITS[ch]
        elif ch in ETHIOPIC_TENS:
            sub += ETHIOPIC_TENS[ch]
        elif ch == ETHIOPIC_HUNDRED:
            if sub == 0 and previous == ETHIOPIC_HUNDRED:  # ፻፻: hundred hundreds
                group *= 100
            else:
                group += (sub or 1) * 100
            sub = 0
        elif ch == ETHIOPIC_TEN_THOUSAND:
            total = ((total + group + sub) or 1) * 10000
            group = sub = 0
        else:
            raise ValueError(f"not an Ethiopic numeral character: {ch!r} (U+{ord(ch):04X})")
        previous = ch
    return total + group + sub


def _int_words(digits: str) -> str:
    n = int(digits)
    if n > MAX_NUMBER or (len(digits) > 1 and digits[0] == "0"):  # phone numbers, ids: digit by digit
        return " ".join(number_to_words(int(d)) for d in digits)
    return number_to_words(n)


def _fraction_words(digits: str) -> str:
    if digits.startswith("0"):
        return " ".join(number_to_words(int(d)) for d in digits)
    return _int_words(digits)


def expand_numbers(text: str) -> str:
    """Replace Ethiopic numerals, ordinals, percentages, decimals and integers by Amharic words."""
    text = _ETHIOPIC_NUMERAL_RE.sub(lambda m: str(parse_ethiopic_numeral(m.group(0))), text)
    # "2015ዓመተ" -> "2015 ዓመተ" so the number words do not fuse with the next word, but keep the
    # ordinal suffix (5ኛ) attached. A prefix before the number (በ2015, "in 2015") stays attached,
    # as Amharic writes it.
    text = re.sub(r"(\d)(?=(?!ኛ)" + _ETHIOPIC_LETTER + ")", r"\1 ", text)
    text = _GROUPED_RE.sub(lambda m: m.group(0).replace(",", ""), text)
    text = _PERCENT_RE.sub(lambda m: f"{m.group(1)} {PERCENT}", text)
    text = _ORDINAL_RE.sub(lambda m: ordinal_to_words(int(m.group(1))) if len(m.group(1)) < 16 else m.group(0), text)
    text = _DECIMAL_RE.sub(lambda m: f"{_int_words(m.group(1))} {POINT} {_fraction_words(m.group(2))}", text)
    return _INTEGER_RE.sub(lambda m: _int_words(m.group(0)), text)


def expand_abbreviations(text: str) -> str:
    """Expand the common Amharic abbreviations in :data:`ABBREVIATIONS` and the name prefixes.

    An abbreviation may carry a prefix or suffix (በት/ቤት, ት/ቤቱ). Its own trailing '.' (ዓ.ም.) is
    consumed unless it ends the text, where it is also the full stop.
    """
    for short, long in ABBREVIATIONS:
        if short.endswith("."):
            text = text.replace(short, long)
        else:
            text = re.sub(re.escape(short) + r"(?:\.(?!$))?", long, text)
    for short, long in NAME_PREFIXES:
        text = re.sub(r"(?<!" + _ETHIOPIC_LETTER + ")" + re.escape(short) + r"(?=" + _ETHIOPIC_LETTER + ")", long, text)
    return text


def _english(word: str) -> str:
    from TTS.tts.layers.xtts.tokenizer import multilingual_cleaners

    return multilingual_cleaners(word, "en")


def _split_latin(text: str) -> list[tuple[bool, str]]:
    """Split into (is_latin, chunk) pieces; a Latin chunk is a run of words containing A-Z/a-z."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    for m in _LATIN_WORD_RE.finditer(text):
        if m.start() > pos:
            pieces.append((False, text[pos : m.start()]))
        pieces.append((True, m.group(0)))
        pos = m.end()
    if pos < len(text):
        pieces.append((False, text[pos:]))
    return pieces


def normalize_amharic(text: str) -> str:
    """Normalise Amharic text into what the tokenizer sees (see the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    text = expand_abbreviations(text)
    text = text.replace("\u1361\u1361", "\u1362")  # "፡፡" typed for "።" (common on keyboards without it)
    for src, dst in PUNCTUATION.items():
        text = text.replace(src, dst)
    for quote in QUOTES:
        text = text.replace(quote, "")
    text = "".join(_english(chunk) if is_latin else expand_numbers(chunk) for is_latin, chunk in _split_latin(text))
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return " ".join(text.split())
