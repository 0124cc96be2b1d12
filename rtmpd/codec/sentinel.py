"""The codecs' one "need more data" sentinel.

A reader's ``next_event()`` returns :data:`NEED_DATA` when the bytes fed to it
so far do not hold another complete event: the caller should feed more bytes
(``receive_data``) and call ``next_event()`` again. It is not an error and
consumes nothing that a later call would need. The FLV, MPEG-TS and RTMP
chunk readers all return this same object, so ``event is NEED_DATA`` holds
whichever module it was imported from.

It is an enum member so that ``mypy --strict`` narrows on ``event is
NEED_DATA`` (``NeedData`` has exactly one member).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["NEED_DATA", "NeedData"]


class NeedData(enum.Enum):
    """Type of :data:`NEED_DATA`: ``next_event()`` needs more bytes."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
