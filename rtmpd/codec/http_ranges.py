"""HTTP range requests and the validators that guard them (RFC 9110), pure.

What a static file server needs to decide, given the request's header
values and the file's size and modification time, without touching the
file or the network:

* ``Range`` (§14.1.1): :func:`parse_range` reads ``bytes=0-99``,
  ``bytes=100-``, ``bytes=-100`` and lists of them; :func:`resolve` turns
  them into :class:`ByteRange` offsets in a file of a given size, dropping
  the unsatisfiable ones and merging those that overlap or touch, so a list
  of ranges never asks for a byte twice (RFC 9110 §14.2 allows both; one
  request of 1 500 copies of ``0-`` once sent a file 1 500 times);
* multipart framing of several ranges (§14.6): :func:`multipart_frames`;
* entity tags (§8.8.3): :func:`entity_tag`, :func:`none_match` for
  ``If-None-Match`` (weak comparison), :func:`if_range_holds` for
  ``If-Range`` (strong comparison, or an exact, strong date);
* HTTP dates (§5.6.7): :func:`parse_http_date` reads all three formats a
  recipient must accept.

A malformed ``Range`` raises :class:`RangeNotUsed` (the caller answers 200
with the whole file, as §14.2 lets a server ignore the field); a malformed
date or entity-tag list is treated as absent or as not matching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rtmpd.codec.errors import RemoteProtocolError

#: Most range-specs read from one ``Range`` field. A player asks for one
#: range; a PDF viewer or a download manager for a handful. RFC 9110 §14.2
#: names many small or overlapping ranges as signs of a broken client or an
#: attack and lets the server ignore them; past this many the whole file is
#: sent once instead, which is never more than the file's size.
MAX_RANGE_SPECS = 16

#: Most digits in a byte position. 19 digits hold any 63-bit offset (8 EiB),
#: beyond any file; a longer number would only make Python's ``int`` work on
#: thousands of digits from a header.
MAX_POSITION_DIGITS = 19

#: Most characters of an ``If-None-Match`` / ``If-Range`` value read. The
#: header block is already bounded (``--max-header-bytes``); this bounds the
#: work of the entity-tag scan to what any client sends (a few tags).
MAX_VALIDATOR_CHARS = 4096

_SPEC = re.compile(rb"([0-9]*)-([0-9]*)")
_ENTITY_TAG = re.compile(rb'(W/)?"[\x21\x23-\x7e\x80-\xff]*"')


class RangeNotUsed(RemoteProtocolError):
    """The ``Range`` field is malformed, names another unit, or asks for
    more than :data:`MAX_RANGE_SPECS` ranges: answer 200 with the whole
    representation."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint=200)


@dataclass(frozen=True, slots=True)
class IntRange:
    """``first-last`` or ``first-`` (``last`` None): inclusive positions."""

    first: int
    last: int | None


@dataclass(frozen=True, slots=True)
class SuffixRange:
    """``-length``: the last ``length`` bytes."""

    length: int


RangeSpec = IntRange | SuffixRange


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``start`` up to (not including) ``stop`` of a representation."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"empty or negative byte range {self.start}..{self.stop}")

    @property
    def length(self) -> int:
        return self.stop - self.start

    def content_range(self, size: int) -> bytes:
        """The ``Content-Range`` value for this range of ``size`` bytes."""
        return b"bytes %d-%d/%d" % (self.start, self.stop - 1, size)


def unsatisfied_range(size: int) -> bytes:
    """The ``Content-Range`` value of a 416 answer (§14.4)."""
    return b"bytes */%d" % size


def _position(digits: bytes, spec: bytes) -> int:
    if len(digits) > MAX_POSITION_DIGITS:
        raise RangeNotUsed(
            f"range {spec[:40]!r} has a position of {len(digits)} digits, "
            f"over MAX_POSITION_DIGITS ({MAX_POSITION_DIGITS})"
        )
    return int(digits)


def parse_range(value: bytes, *, max_specs: int = MAX_RANGE_SPECS) -> list[RangeSpec]:
    """The range-specs of a ``Range`` field value, in the order sent.

    The unit name is case-insensitive; list elements may be empty and be
    surrounded by whitespace (§5.6.1). Raises :class:`RangeNotUsed` for a
    syntax error, a unit other than ``bytes``, ``first > last``, or more
    than ``max_specs`` specs.
    """
    unit, sep, ranges = value.partition(b"=")
    if not sep:
        raise RangeNotUsed("Range has no '='")
    if unit.strip().lower() != b"bytes":
        raise RangeNotUsed(f"Range unit {unit[:20]!r} is not bytes")
    specs: list[RangeSpec] = []
    for element in ranges.split(b","):
        element = element.strip(b" \t")
        if not element:
            continue
        if len(specs) == max_specs:
            raise RangeNotUsed(f"Range lists more than MAX_RANGE_SPECS ({max_specs}) ranges")
        match = _SPEC.fullmatch(element)
        if match is None:
            raise RangeNotUsed(f"Range spec {element[:40]!r} is malformed")
        first, last = match.groups()
        if first:
            start = _position(first, element)
            end = _position(last, element) if last else None
            if end is not None and end < start:
                raise RangeNotUsed(f"Range spec {element[:40]!r} ends before it starts")
            specs.append(IntRange(start, end))
        elif last:
            specs.append(SuffixRange(_position(last, element)))
        else:
            raise RangeNotUsed("Range spec '-' has neither end")
    if not specs:
        raise RangeNotUsed("Range lists no ranges")
    return specs


def resolve(specs: list[RangeSpec], size: int) -> list[ByteRange]:
    """The byte ranges ``specs`` select in a representation of ``size``
    bytes: unsatisfiable specs dropped (§14.1.1: a first position at or past
    the end, a zero-length suffix), positions past the end clamped, a suffix
    longer than the representation taken as all of it, ranges that overlap
    or touch merged into one. Ranges come in the order their first spec was
    sent (§15.3.7.2). An empty list means the request is unsatisfiable
    (416).
    """
    found: list[tuple[int, int, int]] = []  # (start, stop, index of the spec)
    for index, spec in enumerate(specs):
        if isinstance(spec, SuffixRange):
            if spec.length == 0 or size == 0:
                continue
            found.append((max(0, size - spec.length), size, index))
        else:
            if spec.first >= size:
                continue
            stop = size if spec.last is None else min(spec.last + 1, size)
            found.append((spec.first, stop, index))
    found.sort()
    merged: list[list[int]] = []
    for start, stop, index in found:
        if merged and start <= merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], stop)
            last[2] = min(last[2], index)
        else:
            merged.append([start, stop, index])
    merged.sort(key=lambda item: item[2])
    return [ByteRange(start, stop) for start, stop, _ in merged]


def multipart_frames(
    ranges: list[ByteRange], size: int, content_type: bytes, boundary: bytes
) -> tuple[list[bytes], bytes]:
    """The ``multipart/byteranges`` framing of ``ranges`` (§14.6): the
    header that goes before each range's bytes, and the closing delimiter.
    The body is ``header[0] + bytes of ranges[0] + ... + closing``."""
    headers = [
        b"\r\n--%s\r\nContent-Type: %s\r\nContent-Range: %s\r\n\r\n"
        % (boundary, content_type, r.content_range(size))
        for r in ranges
    ]
    return headers, b"\r\n--%s--\r\n" % boundary


def multipart_content_type(boundary: bytes) -> bytes:
    return b"multipart/byteranges; boundary=" + boundary


# --------------------------------------------------------------------------- validators


def entity_tag(size: int, mtime_ns: int) -> bytes:
    """A strong entity-tag for a file of ``size`` bytes last changed at
    ``mtime_ns``: a file replaced or appended to gets another."""
    return b'"%x-%x"' % (size, mtime_ns)


def _entity_tags(value: bytes) -> list[bytes]:
    return [m.group(0) for m in _ENTITY_TAG.finditer(value[:MAX_VALIDATOR_CHARS])]


def _opaque(tag: bytes) -> bytes:
    return tag[2:] if tag.startswith(b"W/") else tag


def none_match(value: bytes, etag: bytes) -> bool:
    """Whether an ``If-None-Match`` value matches the current ``etag`` (the
    condition is then false: 304 for GET and HEAD). ``*`` matches any
    existing representation; comparison is weak (§13.1.2)."""
    if value.strip() == b"*":
        return True
    current = _opaque(etag)
    return any(_opaque(tag) == current for tag in _entity_tags(value))


def if_range_holds(
    value: bytes, *, etag: bytes, last_modified_s: int, mtime_s: float, now_s: float
) -> bool:
    """Whether an ``If-Range`` value lets the ``Range`` be used (§13.1.5);
    if not, the whole representation is sent.

    An entity-tag must match ``etag`` by strong comparison (a weak tag never
    does). A date must equal ``Last-Modified`` exactly and be a strong
    validator (§8.8.2.2): the file's change ``mtime_s`` lies at least one
    second before ``now_s``, so no second change can have shared that
    second. A malformed value never holds.
    """
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        return value == etag and not etag.startswith(b"W/")
    date = parse_http_date(value)
    return date is not None and date == last_modified_s and now_s - mtime_s >= 1


# --------------------------------------------------------------------------- HTTP dates

_MONTHS = {
    name: number
    for number, name in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun",
         b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), start=1,
    )
}
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
#: IMF-fixdate: ``Sun, 06 Nov 1994 08:49:37 GMT``.
_IMF_FIXDATE = re.compile(rb"[A-Za-z]{3}, ([0-9]{2}) ([A-Za-z]{3}) ([0-9]{4}) " + _TIME + rb" GMT")
#: obsolete RFC 850: ``Sunday, 06-Nov-94 08:49:37 GMT``.
_RFC850 = re.compile(rb"[A-Za-z]{6,9}, ([0-9]{2})-([A-Za-z]{3})-([0-9]{2}) " + _TIME + rb" GMT")
#: obsolete asctime: ``Sun Nov  6 08:49:37 1994``.
_ASCTIME = re.compile(rb"[A-Za-z]{3} ([A-Za-z]{3}) ([ 0-9][0-9]) " + _TIME + rb" ([0-9]{4})")


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
    algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_http_date(value: bytes) -> int | None:
    """Seconds since the epoch of an HTTP-date in any of its three formats
    (§5.6.7), or None if ``value`` is not one. A two-digit RFC 850 year is
    taken as 1970..2069."""
    value = value.strip()
    if (m := _IMF_FIXDATE.fullmatch(value)) is not None:
        day, month_name, year_text, hh, mm, ss = m.groups()
        year = int(year_text)
    elif (m := _RFC850.fullmatch(value)) is not None:
        day, month_name, year_text, hh, mm, ss = m.groups()
        year = int(year_text)
        year += 1900 if year >= 70 else 2000
    elif (m := _ASCTIME.fullmatch(value)) is not None:
        month_name, day, hh, mm, ss, year_text = m.groups()
        year = int(year_text)
    else:
        return None
    month = _MONTHS.get(month_name.lower())
    day_number = int(day)
    hour, minute, second = int(hh), int(mm), int(ss)
    if (
        month is None
        or not 1 <= day_number <= _days_in_month(year, month)
        or hour > 23 or minute > 59 or second > 60
    ):
        return None
    days = _days_from_civil(year, month, day_number)
    return days * 86400 + hour * 3600 + minute * 60 + min(second, 59)
