"""Post length as X counts it (twitter-text v3) and shortening drafts to a valid post.

The conformance cases are the 22 of `WeightedTweetsWithDiscountedEmojiCounterTest` in X's own
twitter-text suite (github.com/twitter/twitter-text, conformance/validate.yml, Apache License 2.0,
Copyright 2011 Twitter, Inc.), written here as Python: repetitive texts are built by repetition
instead of spelled out, with X's expected results unchanged.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from twitter_text import parse_tweet

from xbot.x.text import check_post_text, fit_to_post, weighted_length

_X10 = "xxxxxxxxxx-"
_POEM = (
    "故人西辞黄鹤楼，烟花三月下扬州。孤帆远影碧空尽，唯见长江天际流。朱雀桥边野草花，乌衣巷口夕阳斜。"  # noqa: RUF001
    "旧时王谢堂前燕，飞入寻常百姓家。朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。"  # noqa: RUF001
    "泪湿罗巾梦不成，夜深前殿按歌声。红颜未老恩先断，斜倚薰笼坐到明。独在异乡为异客，每逢佳节倍思亲。"  # noqa: RUF001
    "遥知兄弟登高处，遍插茱萸少一人。"  # noqa: RUF001
)
_KANA = "あいうえおかきくけこ"
_LONG_HOST = "https://" + "somesuperlongurl" * 249 + ".com/foo"
_FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
_PUNCTUATION = (
    "This is a tweet with general punctuation characters: "
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b"
    " \u2010 \u2011 \u2012 \u2013 \u2014 \u2015 \u2016  \u2017 \u2018 \u2019 \u201a \u201b"
    " \u201c \u201d \u201e \u201f \u2032 \u2033 \u2034 \u2035 \u2036 \u2037"
)

# (description, text, weightedLength, valid, permillage, displayRangeEnd, validRangeEnd);
# displayRangeStart and validRangeStart are always 0.
CONFORMANCE_V3: list[tuple[str, str, int, bool, int, int, int]] = [
    ("Regular Tweet with url", "Hi http://test.co", 26, True, 92, 16, 16),
    ("Just url", "http://test.co", 23, True, 82, 13, 13),
    ("Long tweet, overflow at char index 280", "285 chars-" + _X10 * 25, 285, False, 1017, 284, 279),
    (
        "Long tweet with url in the middle, overflow at char index 284",
        "285 chars- http://www.twitter.com/jack " + _X10 * 24,
        299, False, 1067, 302, 283,
    ),
    (
        "Long tweet with url at the end, overflow at char index 265",
        _X10 * 24 + " http://www.twitter.com/jack ",
        289, False, 1032, 292, 264,
    ),
    ("10 url string, no overflow", "https://www.twitter.com/aloha " * 10, 240, True, 857, 299, 299),
    ("160 CJK char, overflow at char index 140", _POEM, 320, False, 1142, 159, 139),
    ("160 emoji char, overflow at char index 140", "\U0001f637" * 160, 320, False, 1142, 319, 279),
    ("3 latin char + 160 CJK char, overflow at char index 141", "the" + _POEM, 323, False, 1153, 162, 140),
    (
        "282 chars with a normalized character within valid range but outside 280",
        "282 chars-" + _X10 * 24 + "xxxxxA\u0301x",
        281, False, 1003, 281, 280,
    ),
    (
        "Count a mix of single byte single word, and double word unicode characters",
        "H\U0001f431\u263a" + _FAMILY,
        7, True, 25, 14, 14,
    ),
    (
        "Count unicode emoji chars inside the basic multilingual plane",
        "\U0001f637\U0001f47e\U0001f621\U0001f525\U0001f4a9",
        10, True, 35, 9, 9,
    ),
    (
        "Count unicode emoji chars outside the basic multilingual plane with skin tone modifiers",
        "\U0001f64b\U0001f3fd\U0001f468\u200d\U0001f3a4",
        4, True, 14, 8, 8,
    ),
    (
        "Handle General Punctuation Characters with visible spaces(u2000-200A), no ZWJ/ZWNJ",
        _PUNCTUATION,
        110, True, 392, 109, 109,
    ),
    (
        "Handle long url with invalid domain labels and short url",
        "Long url with invalid domain labels and a short url: "
        + f"{_LONG_HOST} {_LONG_HOST} {_LONG_HOST} https://validurl.com",
        12079, False, 43139, 12075, 279,
    ),
    (
        "Handle a 64 character domain without protocol",
        "randomurl" * 7 + "s.com",
        68, True, 242, 67, 67,
    ),
    (
        "Do not allow > 140 CJK characters by virtue of CJK chars greater than 63 punycode encoded chars"
        " in the host",
        _KANA * 12 + " http://" + _KANA * 5 + "あいう.com",
        358, False, 1278, 184, 143,
    ),
    (
        "Allow > 140 CJK characters by virtue of CJK chars less than 63 punycode encoded chars in the host",
        _KANA * 12 + " http://" + _KANA * 5 + "あい.com",
        264, True, 942, 183, 183,
    ),
    ("140 family emoji", _FAMILY * 140, 280, True, 1000, 1539, 1539),
    ("Emoji with a leading character in the latin range is counted as 2", "1\u20e3", 2, True, 7, 1, 1),
    (
        "Unicode 10.0 emoji",
        "Unicode 10.0 emoji: \U0001f92a; \U0001f9d5; \U0001f9d5\U0001f3fe; "
        "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
        34, True, 121, 47, 47,
    ),
    (
        "Unicode 9.0 emoji",
        "Unicode 9.0 emoji: \U0001f920; \U0001f483; \U0001f483\U0001f3fe",
        29, True, 103, 30, 30,
    ),
]  # fmt: skip


def test_the_suite_has_all_22_cases() -> None:
    assert len(CONFORMANCE_V3) == 22


@pytest.mark.parametrize(
    ("text", "expected"), [(case[1], case[2:]) for case in CONFORMANCE_V3], ids=[c[0] for c in CONFORMANCE_V3]
)
def test_weighted_length_matches_x_conformance(text: str, expected: tuple[Any, ...]) -> None:
    weighted, valid, permillage, display_end, valid_end = expected
    assert weighted_length(text) == weighted
    # The library's whole answer, as X's suite states it: the cases are read right.
    assert parse_tweet(text).asdict() == {
        "weightedLength": weighted,
        "valid": valid,
        "permillage": permillage,
        "displayRangeStart": 0,
        "displayRangeEnd": display_end,
        "validRangeStart": 0,
        "validRangeEnd": valid_end,
    }
    if valid:
        assert check_post_text(text) == text.strip()
    else:
        with pytest.raises(ValueError):
            check_post_text(text)


def test_a_short_text_is_kept_as_it_is() -> None:
    assert fit_to_post("  Thanks, @alice! See example.com  ") == "Thanks, @alice! See example.com"


def test_a_long_text_is_cut_at_a_word_with_an_ellipsis() -> None:
    text = " ".join(["This reply goes on and on"] * 30)
    fitted = fit_to_post(text)
    assert fitted.endswith("…") and parse_tweet(fitted).valid
    assert text.startswith(fitted[:-1]) and not fitted[:-1].endswith(" ")
    assert text[len(fitted) - 1] == " "  # cut between words


def test_a_cut_prefers_the_last_whole_sentence() -> None:
    text = "First sentence is here. " * 10 + "And then one that rambles on " * 10
    fitted = fit_to_post(text)
    assert fitted.endswith("First sentence is here.") and parse_tweet(fitted).valid


def test_a_truncated_text_drops_its_unfinished_sentence_even_when_it_fits() -> None:
    assert fit_to_post("Short one. Another that stops mid", truncated=True) == "Short one."
    # No sentence boundary at all: cut at a word, marked with an ellipsis.
    assert fit_to_post("no sentence end here at all", truncated=True) == "no sentence end here at…"


def test_links_count_23_and_are_never_split() -> None:
    link = "https://example.com/" + "a" * 300
    text = "See " + link + " " + "word " * 60
    fitted = fit_to_post(text)
    assert parse_tweet(fitted).valid
    assert link in fitted  # 23 as X counts it, whatever its length
    unsplittable = "故" * 135 + "https://example.com/path"  # one "word": no gap to cut at
    fitted = fit_to_post(unsplittable)
    assert fitted == "故" * 135 + "…"  # the link is dropped whole, not cut


def test_emoji_sequences_are_never_split() -> None:
    fitted = fit_to_post(_FAMILY * 200)
    assert parse_tweet(fitted).valid
    assert fitted.removesuffix("…").replace(_FAMILY, "") == ""  # whole families only


def test_nothing_postable_gives_an_empty_text() -> None:
    assert fit_to_post("   ") == ""
    assert fit_to_post("\ufffe\uffff") == ""


def test_check_post_text_refuses_empty_and_over_long() -> None:
    with pytest.raises(ValueError, match="empty"):
        check_post_text("  ")
    with pytest.raises(ValueError, match="280"):
        check_post_text("x" * 281)
    assert check_post_text("see example.com " + "y" * 250) == "see example.com " + "y" * 250


_PIECES = st.sampled_from(
    [" ", "  ", "\n", ". ", "! ", "? ", "word", "Ünïcödé", "e\u0301", "故人", "😷", _FAMILY, "1\u20e3",
     "🙋🏽", "https://example.com/a/b?c=d", "example.com", "t.co", "@alice", "#tag", "…", "\u200b",
     "\ufeff", "\r\n"]
)  # fmt: skip
# Plain random text, and texts of words, links, emoji and sentence ends, often over a post.
_TEXTS = st.one_of(
    st.text(max_size=600),
    st.lists(st.one_of(_PIECES, _PIECES, st.text(max_size=12)), min_size=10, max_size=250).map("".join),
)


def _normalized(text: str) -> str:
    """What X counts: NFC, one kind of line break, without the characters X refuses."""
    text = "".join(char for char in text if char not in "\ufffe\ufeff\uffff")
    return unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_TEXTS, truncated=st.booleans())
@example(text="x" * 300, truncated=False)
@example(text=_FAMILY * 150, truncated=True)
def test_fit_to_post_is_always_a_valid_post_and_a_prefix(text: str, truncated: bool) -> None:
    fitted = fit_to_post(text, truncated=truncated)
    event("nothing postable" if not fitted else "whole" if fitted == _normalized(text).strip() else "cut")
    if fitted == "":
        return
    assert parse_tweet(fitted).valid
    assert fitted == fitted.strip()
    body = fitted.removesuffix("…").rstrip()
    source = _normalized(text).strip()
    assert source.startswith(body)
    # A text that is already a valid post comes back whole unless it was truncated.
    if not truncated and parse_tweet(source).valid:
        assert fitted == source
