"""`GET /bots` decodes two search attributes of each listed workflow itself (the SDK's decoder converts
every attribute of every row): it must read what the SDK writes exactly as the SDK would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload, SearchAttributes
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.converter import decode_typed_search_attributes, encode_search_attributes

from xbot.bot_control.commands import _published_bool, _published_datetime
from xbot.temporal import NEXT_DUE_AT, SCHEDULER_RUNNING

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
) | st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)


def _encoded(running: bool, due: datetime) -> SearchAttributes:
    api = SearchAttributes()
    pairs = [SearchAttributePair(SCHEDULER_RUNNING, running), SearchAttributePair(NEXT_DUE_AT, due)]
    encode_search_attributes(TypedSearchAttributes(pairs), api)
    return api


@given(st.booleans(), instants)
def test_the_two_attributes_decode_as_the_sdk_decodes_them(running: bool, due: datetime) -> None:
    api = _encoded(running, due)
    expected = decode_typed_search_attributes(api)
    fields = api.indexed_fields
    assert _published_bool(fields.get(SCHEDULER_RUNNING.name)) is expected.get(SCHEDULER_RUNNING) is running
    decoded = _published_datetime(fields.get(NEXT_DUE_AT.name))
    assert decoded == expected.get(NEXT_DUE_AT) == due


def test_missing_or_malformed_attributes_read_as_unknown() -> None:
    assert _published_bool(None) is None and _published_datetime(None) is None
    for data in (b"", b"not json", b"[true, false]", b'"yes"', b"1", b"{}"):
        assert _published_bool(Payload(data=data)) is None
    for data in (b"", b"not json", b"true", b'"tomorrow"', b'["2026-01-01T00:00:00Z", "x"]'):
        assert _published_datetime(Payload(data=data)) is None
    # Visibility may answer a one-element list.
    assert _published_bool(Payload(data=b"[true]")) is True
    assert _published_datetime(Payload(data=b'["2026-01-01T00:00:00Z"]')) == datetime(2026, 1, 1, tzinfo=UTC)
