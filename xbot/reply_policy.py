"""Reply policy: who a bot answers, how often, what it may say, and what it may spend.

Pure functions only (no I/O): `ReplyPolicy` is the per-bot setting (stored as JSON in
`bot_reply_policies`, edited through `PUT /bots/{id}/reply-policy`); `decide` says whether a mention
may be drafted and, if not, why (`Skip`: a short code for counting and a sentence for people);
`opt_out_word` finds an opt-out request; `check_output` says why a draft may not be posted.
generate_replies gathers the facts and the history from the database and applies these.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from twitter_text import extract_urls

# A keyword, opt-out word or banned word: short, non-blank, compared case-insensitively.
Word = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
UserId = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[0-9]{1,20}$")]
Lang = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$"),
]

MAX_LIST = 500


class ReplyPolicy(BaseModel):
    """A bot's reply policy. None / empty list = no limit of that kind."""

    model_config = ConfigDict(extra="forbid")

    # How often.
    max_replies_per_day: int | None = Field(default=200, ge=0, le=100_000)
    max_replies_per_author_per_day: int | None = Field(default=5, ge=0, le=10_000)
    author_cooldown_seconds: int = Field(default=0, ge=0, le=7 * 86_400)
    max_replies_per_conversation: int | None = Field(default=5, ge=0, le=10_000)
    max_thread_depth: int | None = Field(default=10, ge=0, le=50)
    max_mention_age_hours: float | None = Field(default=24.0, gt=0, le=24 * 365)
    # Who.
    never_answer_user_ids: list[UserId] = Field(default_factory=list, max_length=MAX_LIST)
    skip_operator_bots: bool = True  # the other bots in this installation (their x_user_id)
    opt_out_words: list[Word] = Field(default_factory=lambda: ["stop", "unsubscribe"], max_length=50)
    allow_keywords: list[Word] = Field(default_factory=list, max_length=MAX_LIST)
    deny_keywords: list[Word] = Field(default_factory=list, max_length=MAX_LIST)
    languages: list[Lang] = Field(default_factory=list, max_length=100)
    min_followers: int = Field(default=0, ge=0, le=1_000_000_000)
    min_account_age_days: int = Field(default=0, ge=0, le=10_000)
    # The should-respond gate: a small LLM call that answers RESPOND or IGNORE.
    gate_enabled: bool = False
    gate_model: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None
    ) = None
    # What a draft may contain.
    allow_links: bool = False
    allow_mentions: bool = False  # @handles other than the author's
    allow_cashtags: bool = False
    banned_words: list[Word] = Field(default_factory=list, max_length=MAX_LIST)
    # What it may spend per UTC day.
    daily_token_budget: int | None = Field(default=None, ge=0, le=10_000_000_000)
    daily_x_spend_usd: float | None = Field(default=None, ge=0, le=1_000_000)

    @field_validator("languages", "opt_out_words", "allow_keywords", "deny_keywords", "banned_words")
    @classmethod
    def _unique(cls, values: list[str]) -> list[str]:
        return list(dict.fromkeys(v.casefold() for v in values))

    @field_validator("never_answer_user_ids")
    @classmethod
    def _unique_ids(cls, values: list[str]) -> list[str]:
        return list(dict.fromkeys(values))


@dataclass(frozen=True)
class MentionFacts:
    """What is known about one mention when deciding."""

    author_id: str | None
    text: str
    lang: str | None  # X's `lang` of the post; None when X gave none
    posted_at: datetime | None
    conversation_id: str | None
    thread_depth: int  # parents above the mention (at least this many)
    author_followers: int | None  # None: unknown (not checked)
    author_created_at: datetime | None


@dataclass(frozen=True)
class History:
    """What the bot already did, counted from the database (drafts that may still be posted)."""

    replies_today: int = 0
    author_replies_today: int = 0
    last_reply_to_author: datetime | None = None
    conversation_replies: int = 0
    opted_out: bool = False
    operator_bot_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Skip:
    code: str  # stable, for metrics: e.g. "author_cap"
    reason: str  # for people

    def text(self) -> str:
        return f"{self.code}: {self.reason}"


# Codes, also the metric labels.
SKIP_CODES = (
    "never_answer",
    "operator_bot",
    "opted_out",
    "mention_too_old",
    "language",
    "deny_keyword",
    "no_allow_keyword",
    "few_followers",
    "account_too_new",
    "thread_too_deep",
    "conversation_cap",
    "daily_cap",
    "author_cap",
    "author_cooldown",
    "gate_ignore",
    "budget_spent",
)

_HANDLE = re.compile(r"(?<![\w@])@(\w{1,15})\b")
_WORD_SPLIT = re.compile(r"[^\w$#']+")


def _normal(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _words(text: str) -> list[str]:
    return [w for w in _WORD_SPLIT.split(_normal(text)) if w]


def contains_keyword(text: str, keyword: str) -> bool:
    """Whole-word (or whole-phrase) match, case- and width-insensitive."""
    wanted = _words(keyword)
    if not wanted:
        return False
    words = _words(text)
    n = len(wanted)
    return any(words[i : i + n] == wanted for i in range(len(words) - n + 1))


def opt_out_word(policy: ReplyPolicy, text: str) -> str | None:
    """The opt-out word when the mention, without its leading @handles, is or starts with one
    ("stop", "STOP please"); a word elsewhere ("don't stop") is not a request."""
    words = _words(_HANDLE.sub(" ", text))
    for word in policy.opt_out_words:
        wanted = _words(word)
        if wanted and words[: len(wanted)] == wanted:
            return word
    return None


def decide(policy: ReplyPolicy, mention: MentionFacts, history: History, now: datetime) -> Skip | None:
    """None when the mention may be drafted, else the first rule that refuses it. Who-rules come
    first (they stay true), counting rules last (they change as the day goes on)."""
    author = mention.author_id
    if author is not None and author in policy.never_answer_user_ids:
        return Skip("never_answer", f"author {author} is on the bot's never-answer list")
    if policy.skip_operator_bots and author is not None and author in history.operator_bot_ids:
        return Skip("operator_bot", f"author {author} is another bot of this operator")
    if history.opted_out:
        return Skip("opted_out", f"author {author} opted out of replies")
    if policy.max_mention_age_hours is not None and mention.posted_at is not None:
        age = now - mention.posted_at
        if age > timedelta(hours=policy.max_mention_age_hours):
            hours = age.total_seconds() / 3600
            return Skip(
                "mention_too_old",
                f"{hours:.1f} h old, over max_mention_age_hours ({policy.max_mention_age_hours:g})",
            )
    if policy.languages:
        lang = (mention.lang or "").casefold()
        if lang.split("-")[0] not in {code.split("-")[0] for code in policy.languages}:
            return Skip(
                "language", f"language {mention.lang or 'unknown'!r} not in {', '.join(policy.languages)}"
            )
    text = _HANDLE.sub(" ", mention.text)
    for word in policy.deny_keywords:
        if contains_keyword(text, word):
            return Skip("deny_keyword", f"contains the denied keyword {word!r}")
    if policy.allow_keywords and not any(contains_keyword(text, word) for word in policy.allow_keywords):
        return Skip("no_allow_keyword", "contains none of the allowed keywords")
    if policy.min_followers > 0:
        followers = mention.author_followers
        if followers is None or followers < policy.min_followers:
            shown = "unknown" if followers is None else str(followers)
            return Skip(
                "few_followers", f"author has {shown} followers, under min_followers ({policy.min_followers})"
            )
    if policy.min_account_age_days > 0:
        created = mention.author_created_at
        if created is None or now - created < timedelta(days=policy.min_account_age_days):
            shown = "unknown" if created is None else f"{(now - created).days} days"
            return Skip(
                "account_too_new",
                f"author's account is {shown} old, under min_account_age_days ({policy.min_account_age_days})",
            )
    if policy.max_thread_depth is not None and mention.thread_depth > policy.max_thread_depth:
        return Skip(
            "thread_too_deep",
            f"{mention.thread_depth} posts deep, over max_thread_depth ({policy.max_thread_depth})",
        )
    if (
        policy.max_replies_per_conversation is not None
        and history.conversation_replies >= policy.max_replies_per_conversation
    ):
        return Skip(
            "conversation_cap",
            f"already {history.conversation_replies} replies in conversation {mention.conversation_id}"
            f" (max_replies_per_conversation {policy.max_replies_per_conversation})",
        )
    if policy.max_replies_per_day is not None and history.replies_today >= policy.max_replies_per_day:
        return Skip(
            "daily_cap",
            f"already {history.replies_today} replies today (max_replies_per_day {policy.max_replies_per_day})",
        )
    if (
        policy.max_replies_per_author_per_day is not None
        and history.author_replies_today >= policy.max_replies_per_author_per_day
    ):
        return Skip(
            "author_cap",
            f"already {history.author_replies_today} replies to this author today"
            f" (max_replies_per_author_per_day {policy.max_replies_per_author_per_day})",
        )
    if policy.author_cooldown_seconds and history.last_reply_to_author is not None:
        since = now - history.last_reply_to_author
        if since < timedelta(seconds=policy.author_cooldown_seconds):
            return Skip(
                "author_cooldown",
                f"replied to this author {since.total_seconds():.0f} s ago"
                f" (author_cooldown_seconds {policy.author_cooldown_seconds})",
            )
    return None


# --- output filter --------------------------------------------------------------------------------

_URL = re.compile(
    r"(?i)\b(?:https?://|www\.)\S+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|net|org|io|co|ly|me|app|dev|xyz|info|biz|gg|link|site|ru|cn|tk)\b(?:/\S*)?"
)


def _link(text: str) -> str | None:
    """The first link in the text: what X's own autolinker (twitter-text) would link, or anything
    that looks like a URL to a reader even where X would not link it."""
    found = extract_urls(text)
    if found:
        return str(found[0])
    match = _URL.search(text)
    return match.group(0) if match else None


_CASHTAG = re.compile(r"(?<![\w$])\$[A-Za-z][A-Za-z0-9_.]{0,9}\b")


def check_output(
    policy: ReplyPolicy, text: str, author_username: str | None, bot_username: str | None
) -> str | None:
    """Why this draft may not be posted, or None. Checked on the NFKC form so full-width or
    compatibility characters do not slip a link or a handle past the filter."""
    normal = unicodedata.normalize("NFKC", text)
    if not policy.allow_links and (found := _link(normal)):
        return f"contains a link ({found[:60]})"
    if not policy.allow_mentions:
        allowed = {name.casefold() for name in (author_username, bot_username) if name}
        for handle in _HANDLE.findall(normal):
            if handle.casefold() not in allowed:
                return f"mentions @{handle}, not the author"
    if not policy.allow_cashtags and (tag := _CASHTAG.search(normal)):
        return f"contains the cashtag {tag.group(0)}"
    for word in policy.banned_words:
        if contains_keyword(normal, word):
            return f"contains the banned word {word!r}"
    return None


# --- cost -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prices:
    """USD; X's pay-per-use write prices and the LLM's per-million-token prices (settings)."""

    x_post: float
    x_post_with_url: float
    llm_input_per_mtok: float
    llm_output_per_mtok: float


def x_post_cost(prices: Prices, text: str) -> float:
    """X charges more for a post that carries a URL."""
    return prices.x_post_with_url if _link(unicodedata.normalize("NFKC", text)) else prices.x_post


def llm_cost(prices: Prices, tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * prices.llm_input_per_mtok + tokens_out * prices.llm_output_per_mtok) / 1_000_000
