"""Where ``rtmpd-push`` publishes: the URL, parsed and checked.

``rtmp(s)://``, ``http(s)://`` or ``ws(s)://`` + ``host[:port]/{app}/{stream}[?query]``,
names as the server accepts them (``[A-Za-z0-9_-]{1,128}``; an RTMP app may have an
instance part, ``app/instance``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

__all__ = ["PushTarget", "UsageError", "check_forward_url", "fill_url", "parse_target"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: The placeholders a forward URL may have.
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDERS = frozenset({"app", "stream"})
_DEFAULT_PORTS = {
    "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443, "ws": 80, "wss": 443,
}


class UsageError(Exception):
    """A bad command-line value; the message is one line."""


@dataclass(frozen=True, slots=True)
class PushTarget:
    """Where to publish: ``scheme://host:port/{app}/{stream}[?query]``."""

    scheme: str
    host: str
    port: int
    app: str
    stream: str
    query: str = ""

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "wss", "rtmps")

    @property
    def path(self) -> str:
        """The HTTP / WS request path (with the query)."""
        path = f"/{quote(self.app)}/{quote(self.stream)}"
        return f"{path}?{self.query}" if self.query else path

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_target(url: str) -> PushTarget:
    """Parse and check the URL; raises :class:`UsageError`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UsageError(
            f"URL scheme {parts.scheme!r} is not rtmp, rtmps, http, https, ws or wss"
        )
    if not parts.hostname:
        raise UsageError(f"URL {url!r} has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"URL {url!r} has a bad port") from None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2:
        raise UsageError(f"URL path {parts.path!r} is not /{{app}}/{{stream}}")
    app, stream = "/".join(segments[:-1]), segments[-1]
    for what, value in (("app", app), ("stream", stream)):
        # The server accepts [A-Za-z0-9_-]{1,128}; RTMP apps may have an instance part.
        rtmp = scheme in ("rtmp", "rtmps")
        pieces = value.split("/") if what == "app" and rtmp else [value]
        if not all(_NAME.fullmatch(p) for p in pieces):
            raise UsageError(f"{what} name {value!r} is not [A-Za-z0-9_-]{{1,128}}")
    return PushTarget(scheme, parts.hostname, port, app, stream, parts.query)


def fill_url(template: str, app: str, stream: str) -> str:
    """A forward URL ``template`` with ``{app}`` and ``{stream}`` replaced."""
    return template.replace("{app}", app).replace("{stream}", stream)


def check_forward_url(template: str) -> PushTarget:
    """Check a forward URL (``{app}`` and ``{stream}`` allowed); raises
    :class:`UsageError` with one line saying what is wrong."""
    for name in _PLACEHOLDER.findall(template):
        if name not in _PLACEHOLDERS:
            raise UsageError(
                f"forward URL {template!r}: unknown placeholder {{{name}}} "
                "(only {app} and {stream})"
            )
    # Any valid name stands for the placeholders: the URL must be valid for all.
    return parse_target(fill_url(template, "app", "stream"))
