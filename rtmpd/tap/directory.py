"""``--directory``: the Redis stream directory on the command lines of
``twistd rtmpd`` (an origin claims its streams there) and ``twistd
flvgateway`` (a gateway finds each stream's origin there instead of a fixed
``--upstream``) (``ARCHITECTURE.md`` §9, :mod:`rtmpd.redisdirectory`).

An origin's *location* is the base URL gateways pull its streams from. By
default it is ``http://ADDRESS:PORT`` of the ``--http`` listener: its
``interface=`` when it names one, else this host's address on the route to
the Redis server (the network the gateways share with the origins, in the
usual layout; a box with several networks says ``--directory-location``).
An ``ssl:`` listener gives ``https://``; a ``unix:`` one has no default.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage

if TYPE_CHECKING:
    from rtmpd.admission import Admission
    from rtmpd.redisdirectory import RedisDirectory

log = Logger()

#: Most seconds a claim may live unrefreshed: longer keeps a dead origin's
#: streams findable (gateways retrying it) for longer than anyone waits.
MAX_TTL_S = 3600.0
#: Fewest: claims are refreshed every third of it, and two lost refreshes
#: (a Redis hiccup) must not drop a live stream.
MIN_TTL_S = 1.0


def _ttl(value: str) -> float:
    number = float(value)
    if not MIN_TTL_S <= number <= MAX_TTL_S:
        raise ValueError(f"--directory-ttl must be {MIN_TTL_S:g}..{MAX_TTL_S:g} seconds")
    return number


_URL_HELP = "redis://[:PASSWORD@]HOST[:PORT][/DB]"

#: ``twistd rtmpd``'s options.
RTMPD_OPTIONS: list[Sequence[Any]] = [
    [
        "directory", None, None,
        f"Stream directory ({_URL_HELP}) this origin claims its streams in, so that "
        "flvgateway --directory finds them; a name claimed by another origin is busy. If "
        "it does not answer, publishes are allowed here unclaimed (with a warning).",
    ],
    [
        "directory-location", None, None,
        "The base URL gateways pull this origin's streams from (http://10.0.0.5:8501). "
        "Default: --http's port at its interface, or else at this host's address on the "
        "route to the Redis server.",
    ],
    [
        "directory-ttl", None, 15.0,
        "Seconds a stream stays in the directory after its origin stopped refreshing it "
        "(died); claims are refreshed every third of this.", _ttl,
    ],
]

#: ``twistd flvgateway``'s option.
GATEWAY_OPTIONS: list[Sequence[Any]] = [
    [
        "directory", None, None,
        f"Find each stream's origin in this stream directory ({_URL_HELP}, the one the "
        "origins run with) instead of a fixed --upstream.",
    ],
]

#: Their ``--config`` (TOML) keys.
CONFIG_KEYS: dict[str, Callable[[Any], Any]] = {
    "directory": str, "directory-location": str, "directory-ttl": float,
}


def check_directory(options: Any) -> None:
    """Refuse a bad ``--directory`` or ``--directory-location`` at parse time."""
    from rtmpd.client.pull import check_upstream
    from rtmpd.redisdirectory import parse_redis_url

    url = options.get("directory")
    if url is not None:
        try:
            parse_redis_url(str(url))
        except ValueError as e:
            raise usage.UsageError(f"--directory: {e}") from None
        if importlib.util.find_spec("txredisapi") is None:
            raise usage.UsageError("--directory needs the Redis client txredisapi: "
                                   "pip install 'rtmpd[redis]'")
    location = options.get("directory-location")
    if location is not None:
        if url is None:
            raise usage.UsageError("--directory-location needs --directory")
        try:
            check_upstream(str(location))
        except ValueError as e:
            raise usage.UsageError(f"--directory-location: {e}") from None
        if "?" in str(location) or "#" in str(location):
            raise usage.UsageError("--directory-location is a base URL: no ?query or #fragment")
    ttl = options.get("directory-ttl")
    if ttl is not None:
        try:
            _ttl(str(ttl))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def _endpoint_fields(description: str) -> tuple[str, list[str], dict[str, str]]:
    """A server endpoint string's kind, positional and keyword arguments
    (``\\:`` escapes a colon)."""
    fields = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    kind, args, kwargs = fields[0].lower(), [], {}
    for field in fields[1:]:
        key, sep, value = field.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(field)
    return kind, args, kwargs


def default_location(http: str, redis_host: str, redis_port: int) -> str:
    """The location an origin with ``--http http`` is pulled from (see the
    module's docstring); ValueError when there is none to be had."""
    from rtmpd.redisdirectory import local_address_towards

    kind, args, kwargs = _endpoint_fields(http)
    if kind not in ("tcp", "tcp6", "ssl"):
        raise ValueError(f"--http {http!r} is not a tcp: or ssl: listener")
    port = kwargs.get("port") or (args[0] if args else "")
    if not port.isdigit():
        raise ValueError(f"--http {http!r} names no port")
    address = kwargs.get("interface", "")
    if address in ("", "0.0.0.0", "::", "::0"):
        try:
            address = local_address_towards(redis_host, redis_port)
        except OSError as e:
            raise ValueError(f"no address of this host towards {redis_host}: {e}") from None
    host = f"[{address}]" if ":" in address else address
    scheme = "https" if kind == "ssl" else "http"
    return f"{scheme}://{host}:{port}"


def make_directory(options: Any, reactor: Any, *, ttl_s: float | None = None,
                   ) -> RedisDirectory:
    """The Redis directory of ``--directory``."""
    from rtmpd.redisdirectory import DEFAULT_TTL_S, RedisDirectory, parse_redis_url

    url = parse_redis_url(str(options["directory"]))
    return RedisDirectory(url, reactor, ttl_s=DEFAULT_TTL_S if ttl_s is None else ttl_s)


def add_origin_directory(
    top: service.MultiService, admission: Admission, options: Any, reactor: Any,
    *, shared: bool = False,
) -> str:
    """An origin's ``--directory``: the Redis directory and the claims of
    the streams published here (both children of ``top``). Returns the
    location its streams are claimed at. ``shared``: this is one of the
    ``--workers`` of a box, which all claim at the box's location."""
    from rtmpd.redisdirectory import DEFAULT_TTL_S
    from rtmpd.services.directory import DirectoryClaims

    ttl_s = float(options.get("directory-ttl") or DEFAULT_TTL_S)
    directory = make_directory(options, reactor, ttl_s=ttl_s)
    location = options.get("directory-location")
    if location is None:
        try:
            location = default_location(str(options["http"]), directory.url.host,
                                        directory.url.port)
        except ValueError as e:
            raise SystemExit(f"rtmpd: {e}; say where gateways pull this origin's streams "
                             "from with --directory-location URL") from None
        if location.startswith(("http://127.", "https://127.", "http://[::1]")):
            log.warn("stream directory: this origin's location is {location} (loopback, as "
                     "the Redis server is): gateways on other hosts cannot pull from it; set "
                     "--directory-location", location=location)
    # The directory first, so it is stopped last: the claims' releases
    # on a clean stop go out before its connection closes.
    directory.setServiceParent(top)
    DirectoryClaims(admission, directory, str(location), reactor,
                    refresh_s=ttl_s / 3, shared=shared).setServiceParent(top)
    log.info("stream directory {url}: this origin's streams are claimed at {location} "
             "(entries live {ttl:g} s unrefreshed)", url=directory.url, location=location,
             ttl=ttl_s)
    return str(location)
