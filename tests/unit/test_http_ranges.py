"""Range requests and validators (rtmpd.codec.http_ranges): case tables for
parsing, resolving, multipart framing, entity tags and dates; properties of
resolve for arbitrary headers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtmpd.codec.http_ranges import (
    MAX_RANGE_SPECS,
    ByteRange,
    IntRange,
    RangeNotUsed,
    SuffixRange,
    entity_tag,
    if_range_holds,
    multipart_frames,
    none_match,
    parse_http_date,
    parse_range,
    resolve,
    unsatisfied_range,
)

# --------------------------------------------------------------------------- parse_range

# Range value -> the specs it lists.
PARSE_CASES = [
    (b"bytes=0-99", [IntRange(0, 99)]),
    (b"bytes=100-", [IntRange(100, None)]),
    (b"bytes=-100", [SuffixRange(100)]),
    (b"bytes=0-0", [IntRange(0, 0)]),
    (b"bytes=-0", [SuffixRange(0)]),
    (b"Bytes=5-9", [IntRange(5, 9)]),  # the unit is case-insensitive
    (b"bytes=0-9, 20-29 ,-5", [IntRange(0, 9), IntRange(20, 29), SuffixRange(5)]),
    (b"bytes=,0-9,,", [IntRange(0, 9)]),  # empty list elements are allowed
    (b"bytes=0-,0-", [IntRange(0, None), IntRange(0, None)]),
    (b"bytes=" + b"9" * 19 + b"-", [IntRange(int("9" * 19), None)]),
]

# Range values that are not used: the whole file is sent.
MALFORMED = [
    b"",
    b"bytes",
    b"bytes=",
    b"bytes=,",
    b"items=0-9",
    b"bytes=-",
    b"bytes=9-0",  # ends before it starts
    b"bytes=a-b",
    b"bytes=+1-2",
    b"bytes=1 -2",
    b"bytes=0x10-",
    b"bytes=\xd9\xa1-",  # a non-ASCII digit
    b"bytes=1-2-3",
    b"bytes=" + b"1" * 20 + b"-",  # over MAX_POSITION_DIGITS
    b"bytes=" + b",".join([b"0-"] * (MAX_RANGE_SPECS + 1)),
]


@pytest.mark.parametrize(("value", "specs"), PARSE_CASES)
def test_parse_range_lists_the_specs_in_the_order_sent(value: bytes, specs: list[object]) -> None:
    assert parse_range(value) == specs


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_or_oversized_range_is_not_used(value: bytes) -> None:
    with pytest.raises(RangeNotUsed) as info:
        parse_range(value)
    assert info.value.hint == 200


def test_exactly_max_range_specs_are_read() -> None:
    value = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10) for i in range(MAX_RANGE_SPECS))
    assert len(parse_range(value)) == MAX_RANGE_SPECS


def test_fifteen_hundred_copies_of_an_open_range_are_refused_after_the_limit() -> None:
    """The header that once made the web port send a file 1 500 times."""
    with pytest.raises(RangeNotUsed, match="MAX_RANGE_SPECS"):
        parse_range(b"bytes=" + b",".join([b"0-"] * 1500))


# --------------------------------------------------------------------------- resolve

SIZE = 1000
# specs -> byte ranges (start, stop) in a 1000-byte file
RESOLVE_CASES = [
    ([IntRange(0, 99)], [(0, 100)]),
    ([IntRange(100, None)], [(100, 1000)]),
    ([SuffixRange(100)], [(900, 1000)]),
    ([SuffixRange(5000)], [(0, 1000)]),  # a suffix longer than the file: all of it
    ([IntRange(990, 5000)], [(990, 1000)]),  # the last position is clamped
    ([IntRange(999, None)], [(999, 1000)]),
    ([IntRange(1000, None)], []),  # starts at the end: unsatisfiable
    ([SuffixRange(0)], []),
    ([IntRange(1000, 2000), IntRange(0, 0)], [(0, 1)]),  # unsatisfiable ones dropped
    ([IntRange(0, None)] * 1500, [(0, 1000)]),  # copies merge
    ([IntRange(0, 9), IntRange(10, 19)], [(0, 20)]),  # touching ranges merge
    ([IntRange(0, 9), IntRange(11, 19)], [(0, 10), (11, 20)]),
    ([IntRange(500, 599), IntRange(0, 9)], [(500, 600), (0, 10)]),  # order kept
    ([IntRange(500, 599), IntRange(0, 9), IntRange(550, 700)], [(500, 701), (0, 10)]),
    ([SuffixRange(10), IntRange(0, 9), IntRange(985, 995)], [(985, 1000), (0, 10)]),
]


@pytest.mark.parametrize(("specs", "expected"), RESOLVE_CASES)
def test_resolve_drops_clamps_and_merges(specs: list[object], expected: list[tuple[int, int]]
                                         ) -> None:
    got = resolve(specs, SIZE)  # type: ignore[arg-type]
    assert [(r.start, r.stop) for r in got] == expected


def test_nothing_of_an_empty_file_can_be_resolved() -> None:
    assert resolve([IntRange(0, None), SuffixRange(5)], 0) == []


def test_content_range_values() -> None:
    assert ByteRange(0, 100).content_range(1000) == b"bytes 0-99/1000"
    assert unsatisfied_range(1000) == b"bytes */1000"
    with pytest.raises(ValueError):
        ByteRange(5, 5)


_spec_text = st.one_of(
    st.builds(lambda a, b: b"%d-%d" % (min(a, b), max(a, b)), st.integers(0, 3000),
              st.integers(0, 3000)),
    st.builds(lambda a: b"%d-" % a, st.integers(0, 3000)),
    st.builds(lambda a: b"-%d" % a, st.integers(0, 3000)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_spec_text, min_size=1, max_size=MAX_RANGE_SPECS), st.integers(0, 2500))
def test_resolved_ranges_are_disjoint_inside_the_file_and_cover_what_was_asked(
    texts: list[bytes], size: int
) -> None:
    specs = parse_range(b"bytes=" + b",".join(texts))
    ranges = resolve(specs, size)
    ordered = sorted(ranges, key=lambda r: r.start)
    for before, after in itertools.pairwise(ordered):
        assert before.stop < after.start  # neither overlapping nor touching
    assert all(0 <= r.start < r.stop <= size for r in ranges)
    assert sum(r.length for r in ranges) <= size
    # Every byte some satisfiable spec asked for is in exactly one range.
    wanted: set[int] = set()
    for spec in specs:
        if isinstance(spec, SuffixRange):
            wanted.update(range(max(0, size - spec.length), size) if spec.length else ())
        elif spec.first < size:
            last = size - 1 if spec.last is None else min(spec.last, size - 1)
            wanted.update(range(spec.first, last + 1))
    covered = {i for r in ranges for i in range(r.start, r.stop)}
    assert covered == wanted


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_range_bytes_parse_or_raise_range_not_used(value: bytes) -> None:
    for candidate in (value, b"bytes=" + value):
        try:
            specs = parse_range(candidate)
        except RangeNotUsed:
            continue
        assert 1 <= len(specs) <= MAX_RANGE_SPECS
        resolve(specs, 1234)


# --------------------------------------------------------------------------- multipart


def test_multipart_frames_follow_rfc_9110_section_14_6() -> None:
    headers, closing = multipart_frames(
        [ByteRange(0, 10), ByteRange(500, 510)], 1000, b"video/mp4", b"B0UND"
    )
    assert headers == [
        b"\r\n--B0UND\r\nContent-Type: video/mp4\r\nContent-Range: bytes 0-9/1000\r\n\r\n",
        b"\r\n--B0UND\r\nContent-Type: video/mp4\r\nContent-Range: bytes 500-509/1000\r\n\r\n",
    ]
    assert closing == b"\r\n--B0UND--\r\n"


# --------------------------------------------------------------------------- validators

ETAG = entity_tag(1000, 1_700_000_000_123_456_789)


def test_entity_tag_changes_with_size_and_time() -> None:
    assert ETAG == b'"3e8-17979cfe3d85cd15"'
    assert entity_tag(1001, 1_700_000_000_123_456_789) != ETAG
    assert entity_tag(1000, 1_700_000_000_123_456_790) != ETAG


# If-None-Match value -> whether it matches ETAG (weak comparison)
NONE_MATCH_CASES = [
    (ETAG, True),
    (b"*", True),
    (b" * ", True),
    (b"W/" + ETAG, True),
    (b'"other", ' + ETAG, True),
    (b'"other",' + b"W/" + ETAG, True),
    (b'"other"', False),
    (ETAG[1:-1], False),  # not quoted: not an entity-tag
    (b"", False),
    (b"garbage", False),
]


@pytest.mark.parametrize(("value", "matches"), NONE_MATCH_CASES)
def test_if_none_match_compares_weakly(value: bytes, matches: bool) -> None:
    assert none_match(value, ETAG) is matches


LAST_MODIFIED = 1_700_000_000  # Tue, 14 Nov 2023 22:13:20 GMT
LM_TEXT = b"Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize(
    ("value", "now_s", "holds"),
    [
        (ETAG, LAST_MODIFIED + 5.0, True),
        (b"W/" + ETAG, LAST_MODIFIED + 5.0, False),  # a weak tag never matches
        (b'"other"', LAST_MODIFIED + 5.0, False),
        (LM_TEXT, LAST_MODIFIED + 5.0, True),
        (LM_TEXT, LAST_MODIFIED + 0.5, False),  # changed within the last second: weak
        (b"Tue, 14 Nov 2023 22:13:21 GMT", LAST_MODIFIED + 5.0, False),  # must be equal
        (b"not a date", LAST_MODIFIED + 5.0, False),
    ],
)
def test_if_range_needs_a_strong_match(value: bytes, now_s: float, holds: bool) -> None:
    assert if_range_holds(
        value, etag=ETAG, last_modified_s=LAST_MODIFIED, mtime_s=LAST_MODIFIED + 0.1,
        now_s=now_s,
    ) is holds


DATE_CASES = [
    (b"Sun, 06 Nov 1994 08:49:37 GMT", 784111777),
    (b"Sunday, 06-Nov-94 08:49:37 GMT", 784111777),
    (b"Sun Nov  6 08:49:37 1994", 784111777),
    (b"Thu, 01 Jan 1970 00:00:00 GMT", 0),
    (b"Tue, 29 Feb 2000 12:00:00 GMT", 951825600),
    (b"Wednesday, 01-Jan-25 00:00:00 GMT", 1735689600),
    (LM_TEXT, LAST_MODIFIED),
]


@pytest.mark.parametrize(("text", "seconds"), DATE_CASES)
def test_http_dates_in_all_three_formats(text: bytes, seconds: int) -> None:
    assert parse_http_date(text) == seconds


@pytest.mark.parametrize(
    "text",
    [b"", b"yesterday", b"Sun, 06 Nov 1994 08:49:37 PST", b"Sun, 31 Feb 1994 08:49:37 GMT",
     b"Sun, 06 Xyz 1994 08:49:37 GMT", b"Sun, 06 Nov 1994 25:49:37 GMT", b"1994-11-06"],
)
def test_what_is_not_an_http_date(text: bytes) -> None:
    assert parse_http_date(text) is None


def test_http_date_agrees_with_twisted_formatting() -> None:
    from twisted.web.http import datetimeToString

    for seconds in (0, 784111777, LAST_MODIFIED, 4102444800):
        assert parse_http_date(datetimeToString(seconds)) == seconds
