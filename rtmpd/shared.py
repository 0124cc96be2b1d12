"""Dicts that many connections hold alike.

A dict of each connection's own is 64 bytes empty and 224 with one to five
entries (int keys), held for as long as the connection lives: hours, for a
viewer. Most of a player's small dicts are the same as every other
player's (no publish names, one message stream playing, the same last
chunk headers), so they hold one :class:`SharedDict` instead, and take a
dict of their own (:func:`own`) or another shared one (:func:`shared`)
when theirs changes.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


class SharedDict(dict[Any, Any]):
    """A dict that many connections hold alike. Reading, ``pop(key,
    default)`` of a missing key and ``clear()`` of the empty one work as on
    any dict; writing raises, so that a holder never changes what others hold: it assigns a
    dict of its own first (:func:`own`) or a new shared one (:func:`shared`)."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a shared dict: assign a dict of your own before writing")

    __setitem__ = __delitem__ = setdefault = update = __ior__ = popitem = _refuse

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            self._refuse()
        return dict.pop(self, key, *default)

    def clear(self) -> None:
        if self:
            self._refuse()


#: The one empty :class:`SharedDict`.
NO_ENTRIES: dict[Any, Any] = SharedDict()

#: Most distinct dicts :func:`shared` holds, and most entries in one.
MAX_SHARED_DICTS = 256
MAX_SHARED_ENTRIES = 4
_SHARED: dict[tuple[tuple[Hashable, Hashable], ...], SharedDict] = {}


def own(entries: dict[Any, Any]) -> dict[Any, Any]:
    """``entries``, or a new dict of its own in place of a shared one."""
    return dict(entries) if isinstance(entries, SharedDict) else entries


def shared(entries: dict[Any, Any]) -> dict[Any, Any]:
    """A :class:`SharedDict` equal to ``entries`` (hashable keys and values),
    the same object for equal contents while the table has room."""
    if not entries:
        return NO_ENTRIES
    if len(entries) > MAX_SHARED_ENTRIES:
        return SharedDict(entries)
    key = tuple(entries.items())
    held = _SHARED.get(key)
    if held is None:
        held = SharedDict(entries)
        if len(_SHARED) < MAX_SHARED_DICTS:
            _SHARED[key] = held
    return held
