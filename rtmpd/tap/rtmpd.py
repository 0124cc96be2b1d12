"""``twistd rtmpd``: options and the service tree."""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from rtmpd._twisted import raise_listen_errors
from rtmpd._version import __version__
from rtmpd.gcpacing import PacedCollection
from rtmpd.protocols.readpacing import MAX_INTERVAL_MS
from rtmpd.registry import StreamConfig, StreamRegistry
from rtmpd.tap import directory as directory_tap
from rtmpd.viewerlog import ViewerLogService

if TYPE_CHECKING:
    from rtmpd.client.tls import TrustRoot

log = Logger()

#: Options that may appear in the TOML file given by --config, with the
#: function that converts the file's value.
_CONFIG_KEYS: dict[str, Callable[[Any], Any]] = {
    "rtmp": str,
    "http": str,
    "web": str,
    "rtmps": str,
    "https": str,
    "web-https": str,
    "ca-file": str,
    "root": str,
    **directory_tap.CONFIG_KEYS,
    "gop-cache-frames": int,
    "gop-cache-bytes": int,
    "gop-cache-seconds": float,
    "viewer-queue-bytes": int,
    "merge-ms": str,
    "publish-read-ms": float,
    "chunk-size": int,
    "handshake-timeout": float,
    "idle-timeout": float,
    "record": lambda v: ",".join(v) if isinstance(v, list) else str(v),
    "hls-fragment": float,
    "hls-window": int,
    "record-max-age": str,
    "record-max-bytes": str,
    "record-min-free": str,
    "publish-key": str,
    "play-key": str,
    "sign-secret": str,
    "on-publish": str,
    "on-play": str,
    "on-publish-done": str,
    "on-play-done": str,
    "hook-timeout": float,
    "cors-publish": bool,
    "takeover": bool,
    "reconnect-url": str,
    "max-connections": int,
    "max-connections-per-ip": int,
    "max-streams": int,
    "max-viewers-per-stream": int,
    "publisher-timeout": float,
    "header-timeout": float,
    "max-header-bytes": int,
    "api-token": str,
    "no-metrics": bool,
    "forward": lambda v: _forward_table(v),
    "pull": lambda v: _pull_table(v),
    "pull-always": bool,
    "workers": str,
}

#: The second listener of each port, for its TLS twin beside the plain one
#: (RTMPS beside RTMP, ...): option -> the option whose protocol it serves.
TLS_TWINS: dict[str, str] = {"rtmps": "rtmp", "https": "http", "web-https": "web"}


def _forward_table(value: Any) -> list[Any]:
    """TOML ``[forward]``: ``APP = URL`` or ``APP = [URL, ...]``."""
    from rtmpd.client.target import UsageError
    from rtmpd.services.forward import parse_forward

    if not isinstance(value, dict):
        raise ValueError("forward must be a table: APP = URL or APP = [URL, ...]")
    rules = []
    for app, urls in value.items():
        for url in [urls] if isinstance(urls, str) else urls:
            if not isinstance(url, str):
                raise ValueError(f"forward.{app}: {url!r} is not a URL")
            try:
                rules.append(parse_forward(f"{app}={url}"))
            except UsageError as e:
                raise ValueError(str(e)) from None
    return rules


def _pull_table(value: Any) -> list[Any]:
    """TOML ``[pull]``: ``"APP/STREAM" = URL``."""
    from rtmpd.client.target import UsageError
    from rtmpd.services.upstream import parse_pull

    if not isinstance(value, dict):
        raise ValueError('pull must be a table: "APP/STREAM" = URL')
    rules = []
    for path, url in value.items():
        try:
            rules.append(parse_pull(f"{path}={url}"))
        except UsageError as e:
            raise ValueError(str(e)) from None
    return rules

#: Outgoing RTMP chunk size bounds: RTMP allows 1..0x7FFFFFFF; below 128 is
#: pointless overhead, and above 16 MiB no client has a use for it.
MIN_CHUNK_SIZE = 128
MAX_CHUNK_SIZE = 16 * 1024 * 1024


def _positive_int(name: str) -> Callable[[str], int]:
    def coerce(value: str) -> int:
        number = int(value)
        if number <= 0:
            raise ValueError(f"{name} must be positive")
        return number

    coerce.coerceDoc = "A positive integer."  # type: ignore[attr-defined]
    return coerce


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _publish_read_ms(value: str) -> float:
    number = float(value)
    if not 0 <= number <= MAX_INTERVAL_MS:
        raise ValueError(f"must be 0..{MAX_INTERVAL_MS} ms")
    return number


def _limit(name: str) -> Callable[[str], int]:
    def coerce(value: str) -> int:
        number = int(value)
        if number < 0:
            raise ValueError(f"{name} must be 0 (no limit) or more")
        return number

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def _hook_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("a hook must be an http:// or https:// URL")
    return value


#: Longest --reconnect-url: it goes to publishers in an onStatus, and a
#: tcUrl is a host and an app, far shorter than this.
MAX_RECONNECT_URL = 1024


def _reconnect_url(value: str) -> str:
    """A tcUrl to send publishers: printable, no spaces, bounded."""
    if not value or len(value) > MAX_RECONNECT_URL or not value.isprintable() or " " in value:
        raise usage.UsageError(
            f"--reconnect-url must be a URL of 1..{MAX_RECONNECT_URL} printable characters "
            "without spaces"
        )
    return value


class ShortUsageOnError(usage.Options):
    """Options whose usage, once a bad option has been met, is one line.

    twistd prints a subcommand's whole usage (130 lines for rtmpd) and then
    the reason on the last line; after an error the reason is what matters,
    so the usage above it shrinks to a pointer to ``--help``."""

    #: The twistd subcommand, for that line.
    command = "rtmpd"
    _failed = False

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self._failed = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        if self._failed:
            return f"{self.command}: `twistd {self.command} --help` lists the options"
        return super().getUsage(width)


class Options(ShortUsageOnError):
    """Command line of ``twistd rtmpd``. Every option can also be set in a
    TOML file (``--config``); the command line wins."""

    synopsis = "[options]"
    longdesc = (
        "A live-streaming server: publish over RTMP, HTTP-FLV (POST/PUT) or WS-FLV; "
        "play over RTMP, HTTP-FLV or WS-FLV, with a GOP cache for instant start; "
        "record HLS, FLV and fMP4/MP4 under --root. Listeners are Twisted endpoint "
        "strings, so ssl:1936:privateKey=key.pem:certKey=cert.pem gives RTMPS / HTTPS / WSS."
    )

    optParameters: list[Sequence[Any]] = [
        ["rtmp", None, "tcp:1935", "RTMP listener (publish and play rtmp://host/{app}/{stream})."],
        [
            "http", None, "tcp:8501",
            "HTTP listener: HTTP-FLV and WS-FLV play /{app}/{stream}.flv, publish /{app}/{stream}.",
        ],
        [
            "web", None, "tcp:8080",
            "Web listener: the player pages, /config.json and the --root tree (recordings), "
            "read-only.",
        ],
        [
            "rtmps", None, None,
            "A second RTMP listener, for RTMPS beside plain RTMP "
            "(ssl:1936:privateKey=key.pem:certKey=cert.pem).",
        ],
        [
            "https", None, None,
            "A second HTTP listener, for HTTPS-FLV and WSS beside plain HTTP "
            "(ssl:8502:privateKey=key.pem:certKey=cert.pem).",
        ],
        [
            "web-https", None, None,
            "A second web listener, for the pages and recordings over HTTPS "
            "(ssl:8443:privateKey=key.pem:certKey=cert.pem).",
        ],
        [
            "ca-file", None, None,
            "PEM file of the CAs that the certificates of rtmps://, https:// and wss:// "
            "--forward and --pull servers must chain to (default: the system's CAs).",
        ],
        ["root", None, "./media", "Directory for recordings, served by --web."],
        ["config", "c", None, "TOML file with any of these options (the command line wins)."],
        [
            "gop-cache-frames", None, 3000,
            "Most frames kept in the GOP cache per stream.", _positive_int("gop-cache-frames"),
        ],
        [
            "gop-cache-bytes", None, 16 * 1024 * 1024,
            "Most bytes kept in the GOP cache per stream.", _positive_int("gop-cache-bytes"),
        ],
        [
            "gop-cache-seconds", None, 15.0,
            "Longest GOP kept in the cache, in seconds.", _positive_float,
        ],
        [
            "viewer-queue-bytes", None, 1_500_000,
            "A viewer this many bytes behind the live stream is disconnected.",
            _positive_int("viewer-queue-bytes"),
        ],
        [
            "merge-ms", None, "auto",
            "Send to a stream's viewers at most once per this many ms: 'auto' (every "
            "frame at once while passes over the viewers take under 80% of the time, "
            "else 1.25x the last pass, up to 500 ms) or a number (0 = every frame at once).",
        ],
        [
            "publish-read-ms", None, 250,
            "While a stream has no viewers (recorders only), read its RTMP publisher's "
            "socket at most once per this many ms: the server wakes once per batch of "
            "frames, not per frame, for about half the CPU. Shortened for high bitrates "
            "(one batch stays inside the TCP window); 0 = always read at once.",
            _publish_read_ms,
        ],
        [
            "chunk-size", None, 4096, "Outgoing RTMP chunk size in bytes.",
            _positive_int("chunk-size"),
        ],
        [
            "handshake-timeout", None, 15.0,
            "Seconds a connection may take to handshake and start publishing or playing.",
            _positive_float,
        ],
        [
            "publisher-timeout", None, 30.0,
            "Seconds a publisher may send no media (pings do not count) before it is "
            "disconnected and its name freed.",
            _positive_float,
        ],
        [
            "idle-timeout", None, None,
            "Old name of --publisher-timeout.", _positive_float,
        ],
        [
            "record", None, "hls",
            "Recorders: comma list of hls, flv, fmp4, fmp4-separate, or none.",
        ],
        [
            "hls-fragment", None, 2.0,
            "HLS segment (and fMP4 fragment) target length in seconds; cut at keyframes.",
            _positive_float,
        ],
        [
            "hls-window", None, 6, "Segments listed in the live HLS playlist.",
            _positive_int("hls-window"),
        ],
        [
            "record-max-age", None, "0",
            "Delete finished recordings older than this: seconds, or with s, m, h or d "
            "(7d). 0: keep them.",
        ],
        [
            "record-max-bytes", None, "0",
            "Delete the oldest finished recordings while everything under --root takes "
            "more than this: bytes, or with K, M, G or T (500G). 0: no limit.",
        ],
        [
            "record-min-free", None, "1G",
            "Start no new recording while the --root disk has less free space than this "
            "(live play goes on): bytes, or with K, M, G or T. 0: no floor.",
        ],
        [
            "publish-key", None, None,
            "Publishing needs ?key=THIS (RTMP: on the stream name or the app/tcUrl).",
        ],
        ["play-key", None, None, "Playing needs ?key=THIS."],
        [
            "sign-secret", None, None,
            "Publish and play need ?expires=UNIX&sig=HEX, the HMAC-SHA256 of "
            "'publish|play:{app}/{stream}:{expires}' with this secret (rtmpd-sign makes them).",
        ],
        ["on-publish", None, None, "HTTP hook asked before a publish (2xx allows).", _hook_url],
        ["on-play", None, None, "HTTP hook asked before a play (2xx allows).", _hook_url],
        ["on-publish-done", None, None, "HTTP hook told when a publish ends.", _hook_url],
        ["on-play-done", None, None, "HTTP hook told when a play ends.", _hook_url],
        [
            "hook-timeout", None, 5.0,
            "Seconds an on-publish/on-play hook may take; past that it denies.", _positive_float,
        ],
        [
            "max-connections", None, 30000,
            "Most open connections on the RTMP and HTTP ports (0: no limit).",
            _limit("max-connections"),
        ],
        [
            "max-connections-per-ip", None, 0,
            "Most open connections from one address on those ports (0: no limit).",
            _limit("max-connections-per-ip"),
        ],
        ["max-streams", None, 1000, "Most live streams (0: no limit).", _limit("max-streams")],
        [
            "max-viewers-per-stream", None, 0,
            "Most viewers of one stream, all protocols (0: no limit).",
            _limit("max-viewers-per-stream"),
        ],
        [
            "header-timeout", None, 10.0,
            "Seconds an HTTP client may take to send its request headers.", _positive_float,
        ],
        [
            "max-header-bytes", None, 16384,
            "Most bytes of HTTP request line and headers.", _positive_int("max-header-bytes"),
        ],
        *directory_tap.RTMPD_OPTIONS,
        [
            "api-token", None, None,
            "Bearer token for /api/ and /metrics on the web port (without one, only "
            "loopback clients may use them).",
        ],
        [
            "workers", None, "1",
            "Processes serving the ports: 1 (one process, one core), a number, or 'auto' "
            "(one per core). Each worker listens on every port (SO_REUSEPORT, Linux; tcp:, "
            "tcp6: and ssl: listeners, TLS included) and plays the streams published to the "
            "others by relaying them; --pull is refused with more than one.",
        ],
        [
            "worker", None, None,
            "Internal: set by --workers on the command line of each worker (INDEX:RUN_DIR).",
        ],
        [
            "reconnect-url", None, None,
            "On shutdown, RTMP publishers that support Enhanced RTMP reconnect are asked to "
            "reconnect to this tcUrl (rtmp://standby/live, or relative: //standby/live); "
            "without it, to the URL they used.",
            _reconnect_url,
        ],
    ]

    optFlags: list[Sequence[Any]] = [
        [
            "takeover", None,
            "A new publisher with valid credentials replaces the stream's current one "
            "(an encoder reconnecting after a network drop), which is closed.",
        ],
        [
            "cors-publish", None,
            "Let pages on other sites publish over HTTP or WebSocket (CORS); without it a "
            "browser page may publish only from the server's own host name.",
        ],
        ["no-metrics", None, "Serve no /metrics."],
        [
            "pull-always", None,
            "Pull every --pull stream from the start and keep it pulled, not only while "
            "it has viewers.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self._given: set[str] = set()
        self["forward"] = []
        self["pull"] = []

    def opt_forward(self, value: str) -> None:
        """APP=URL: re-publish every stream published under APP to URL, with {stream} replaced by the stream's name (rtmp://, rtmps://, http(s)://, ws(s)://). Repeatable."""  # noqa: E501 (see opt_pull)
        from rtmpd.client.target import UsageError
        from rtmpd.services.forward import parse_forward

        try:
            self["forward"].append(parse_forward(value))
        except UsageError as e:
            raise usage.UsageError(str(e)) from None

    def opt_pull(self, value: str) -> None:
        """APP/STREAM=URL: the stream APP/STREAM is pulled from URL (another server's HTTP-FLV play URL or an rtmp(s):// URL) when a viewer asks for it. Repeatable."""  # noqa: E501 (one line: twistd's --help keeps a docstring's line breaks)
        from rtmpd.client.target import UsageError
        from rtmpd.services.upstream import parse_pull

        try:
            self["pull"].append(parse_pull(value))
        except UsageError as e:
            raise usage.UsageError(str(e)) from None

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        for token in argv:
            if token.startswith("--"):
                self._given.add(token[2:].split("=", 1)[0].replace("_", "-"))
            elif token.startswith("-c"):
                self._given.add("config")
        #: The command line as given: what each of --workers' processes runs.
        self.argv = argv
        super().parseOptions(argv)

    def opt_version(self) -> None:
        """Print rtmpd's version and exit (``twistd --version`` is Twisted's)."""
        print(f"rtmpd {__version__.public()}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self["config"]:
            self._load_config(self["config"])
        if self["idle-timeout"] is not None and "publisher-timeout" not in self._given:
            self["publisher-timeout"] = self["idle-timeout"]
        for name in ("publish-key", "play-key", "sign-secret", "api-token"):
            if self[name] is not None and not str(self[name]).strip():
                raise usage.UsageError(f"--{name} must not be empty")
        self["merge-ms"] = parse_merge_ms(self["merge-ms"])
        self["workers"] = parse_workers(self["workers"])
        for name in ("rtmp", "http", "web"):
            check_endpoint(name, str(self[name]))
        for name in TLS_TWINS:
            if self[name] is not None:
                check_endpoint(name, str(self[name]))
        if self["ca-file"] is not None:
            check_ca_file(str(self["ca-file"]))
        if self["workers"] > 1 or self["worker"]:
            check_workers(self)
        if not MIN_CHUNK_SIZE <= self["chunk-size"] <= MAX_CHUNK_SIZE:
            raise usage.UsageError(
                f"--chunk-size {self['chunk-size']} is out of range "
                f"{MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}"
            )
        from rtmpd.services.recorders import parse_record_option

        retention_settings(self)

        try:
            self["record"] = parse_record_option(self["record"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        directory_tap.check_directory(self)

    def _load_config(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise usage.UsageError(f"cannot read --config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise usage.UsageError(f"--config {path} is not valid TOML: {e}") from None
        for raw_key, value in data.items():
            key = raw_key.replace("_", "-")
            convert = _CONFIG_KEYS.get(key)
            if convert is None:
                raise usage.UsageError(
                    f"--config {path}: unknown option {raw_key!r} "
                    f"(known: {', '.join(sorted(_CONFIG_KEYS))})"
                )
            if key in self._given:
                continue
            try:
                self[key] = convert(value)
            except (TypeError, ValueError) as e:
                why = f" ({e})" if key in ("forward", "pull") else ""
                raise usage.UsageError(
                    f"--config {path}: bad value {value!r} for {raw_key!r}{why}"
                ) from None


#: Listen backlog for TCP and TLS listeners unless the endpoint string sets
#: one. Twisted's default of 50 drops connections when viewers arrive in a
#: burst (a popular stream going live): 2 000 joins a second overflow it.
DEFAULT_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=DEFAULT_BACKLOG`` added to a tcp/ssl
    endpoint that does not set its own."""
    kind = description.split(":", 1)[0].lower()
    if kind in ("tcp", "tcp6", "ssl") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


class ListenerService(internet.StreamServerEndpointService):
    """A listener that stops twistd with one clear line when its port is
    taken (rather than a traceback)."""

    def __init__(
        self, option: str, description: str, endpoint: Any, factory: Any, *,
        program: str = "rtmpd",
    ) -> None:
        super().__init__(endpoint, factory)
        self.option = option
        self.description = description
        self.program = program
        raise_listen_errors(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise SystemExit(
                f"{self.program}: cannot listen on --{self.option} {self.description}: {reason}"
            ) from None


def parse_merge_ms(value: object) -> int | None:
    """``--merge-ms``: None for 'auto' (the adaptive window), else ms in 0..10000."""
    merge = str(value).strip().lower()
    if merge == "auto":
        return None
    try:
        ms = int(merge)
    except ValueError:
        raise usage.UsageError(
            f"--merge-ms must be 'auto' or a number of ms, not {merge!r}") from None
    if not 0 <= ms <= 10_000:
        raise usage.UsageError(f"--merge-ms {ms} is out of range 0..10000")
    return ms


#: Most ``--workers``: far more than any box has cores; each worker is a
#: whole process with its own memory.
MAX_WORKERS = 256
#: The twistd ``--logger`` of a worker: its log goes to the parent.
WORKER_LOGGER = "rtmpd.services.workers.log_to_parent"
#: Listener kinds a worker can share with the others (``SO_REUSEPORT``).
SHARABLE_ENDPOINTS = ("tcp", "tcp6", "ssl")


def parse_workers(value: object) -> int:
    """``--workers``: a count of 1..MAX_WORKERS, or 'auto' (the cores)."""
    text = str(value).strip().lower()
    if text == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    try:
        count = int(text)
    except ValueError:
        raise usage.UsageError(
            f"--workers must be a number or 'auto', not {text!r}") from None
    if not 1 <= count <= MAX_WORKERS:
        raise usage.UsageError(f"--workers {count} is out of range 1..{MAX_WORKERS}")
    return count


def check_workers(options: Any) -> None:
    """What more than one worker cannot do, refused at parse time."""
    if not sys.platform.startswith("linux"):
        raise usage.UsageError("--workers needs Linux (SO_REUSEPORT spreads the connections)")
    for name in ("rtmp", "http", "web", *TLS_TWINS):
        description = options[name]
        if description is None:
            continue
        kind = str(description).split(":", 1)[0].lower()
        if kind not in SHARABLE_ENDPOINTS:
            raise usage.UsageError(
                f"--{name} {description!r}: with --workers, listeners must be "
                f"{', '.join(k + ':' for k in SHARABLE_ENDPOINTS)} (every worker binds the port)")
    if options["pull"]:
        raise usage.UsageError(
            "--pull works with one process only (each worker would pull and record it): "
            "drop --workers or --pull")
    if options["worker"]:
        from rtmpd.services.workers import parse_worker

        try:
            parse_worker(str(options["worker"]))
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def check_endpoint(option: str, description: str) -> None:
    """Refuse a listener option that is not a usable endpoint string, at parse time.

    Only parsed here (the reactor is used when listening); ssl: also loads its
    key and certificate now, so a missing file is a usage error, not a traceback."""
    try:
        endpoints.serverFromString(None, description)
    except Exception as e:
        raise usage.UsageError(
            f"--{option} {description!r} is not a usable endpoint: {e}") from None


def check_ca_file(path: str) -> None:
    """Refuse a ``--ca-file`` that cannot be read or holds no certificate, at
    parse time."""
    from rtmpd.client.tls import load_ca_file

    try:
        load_ca_file(path)
    except ValueError as e:
        raise usage.UsageError(f"--ca-file: {e}") from None


def trust_root(options: Any) -> TrustRoot | None:
    """The CAs of ``--ca-file`` (None without one: the system's CAs)."""
    from rtmpd.client.tls import load_ca_file

    path = options.get("ca-file")
    if not path:
        return None
    try:
        return load_ca_file(str(path))
    except ValueError as e:
        raise SystemExit(f"--ca-file: {e}") from None


def retention_settings(options: Any) -> Any:
    """``--record-max-age``, ``--record-max-bytes``, ``--record-min-free`` as
    :class:`rtmpd.services.retention.RetentionSettings`."""
    from rtmpd.services.retention import (
        DEFAULT_MIN_FREE_BYTES,
        RetentionSettings,
        parse_duration,
        parse_size,
    )

    try:
        return RetentionSettings(
            max_age_s=parse_duration(options.get("record-max-age", 0)),
            max_bytes=parse_size(options.get("record-max-bytes", 0)),
            min_free_bytes=parse_size(options.get("record-min-free", DEFAULT_MIN_FREE_BYTES)),
        )
    except ValueError as e:
        raise usage.UsageError(f"--record-max-age/-max-bytes/-min-free: {e}") from None


def stream_config(options: Any) -> StreamConfig:
    """The registry's settings from the options every program with viewers shares."""
    return StreamConfig(
        gop_cache_frames=options["gop-cache-frames"],
        gop_cache_bytes=options["gop-cache-bytes"],
        gop_cache_ms=int(float(options["gop-cache-seconds"]) * 1000),
        viewer_queue_bytes=options["viewer-queue-bytes"],
        merge_ms=options["merge-ms"],
        publish_read_ms=options.get("publish-read-ms", 0),
    )


def add_listener(
    top: service.MultiService, option: str, description: str, factory: Any, reactor: Any, *,
    program: str = "rtmpd",
) -> ListenerService:
    """Listen on ``description`` (``--option``) with ``factory``, as a child of ``top``."""
    try:
        endpoint = endpoints.serverFromString(reactor, with_backlog(description))
    except (ValueError, KeyError, TypeError) as e:
        raise usage.UsageError(f"--{option} {description!r} is not an endpoint: {e}") from None
    listener = ListenerService(option, description, endpoint, factory, program=program)
    listener.setName(option)
    listener.setServiceParent(top)
    return listener


#: Seconds shutdown waits for done hooks still being posted.
DONE_HOOK_SHUTDOWN_S = 5.0


class DoneHookService(service.Service):
    """Lets the last done-hook posts go out on shutdown (for at most
    :data:`DONE_HOOK_SHUTDOWN_S`)."""

    name = "done-hooks"

    def __init__(self, notifier: Any, clock: Any) -> None:
        self.notifier = notifier
        self.clock = clock

    def stopService(self) -> Any:
        super().stopService()
        d = self.notifier.idle()
        d.addTimeout(DONE_HOOK_SHUTDOWN_S, self.clock)
        d.addErrback(lambda _: None)
        return d


def makeService(
    options: Options | dict[str, Any], reactor: Any = None
) -> service.MultiService:
    """The rtmpd service tree: listeners for RTMP, HTTP-FLV and the web port."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    worker = None
    if options.get("worker"):
        from rtmpd.services.workers import parse_worker

        worker = parse_worker(str(options["worker"]))
    elif int(options.get("workers", 1)) > 1:
        return make_parent(options, reactor)

    from rtmpd.admission import Admission, Limits
    from rtmpd.auth import DoneHookNotifier, build_authorizers, build_listeners, make_agent
    from rtmpd.protocols.flvhttp import FlvHttpResource, FlvSite
    from rtmpd.protocols.flvws import make_ws_resource
    from rtmpd.protocols.pages import page_config, pages_directory
    from rtmpd.protocols.rtmp import RtmpServerFactory
    from rtmpd.protocols.web import make_web_site
    from rtmpd.services.stats import Metrics

    registry = StreamRegistry(reactor, stream_config(options))
    root = os.path.abspath(options["root"])
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"rtmpd: cannot create --root {root}: {e.strerror}") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise SystemExit(f"rtmpd: --root {root} is not writable")

    top = service.MultiService()
    top.setName("rtmpd")
    ViewerLogService(registry.viewer_log).setServiceParent(top)

    metrics = None if options.get("no-metrics") else Metrics(registry)
    hooks = ("on-publish", "on-play", "on-publish-done", "on-play-done")
    # One connection pool for every hook.
    agent = make_agent(reactor) if any(options.get(h) for h in hooks) else None
    try:
        authorizers = build_authorizers(
            options, reactor, agent,
            on_latency=metrics.observe_hook if metrics is not None else None,
        )
        admission_listeners = build_listeners(options, reactor, agent)
    except ValueError as e:
        raise SystemExit(f"rtmpd: {e}") from None
    admission = Admission(
        registry,
        authorizers=authorizers,
        limits=Limits(
            max_connections=int(options.get("max-connections", 0)),
            max_connections_per_ip=int(options.get("max-connections-per-ip", 0)),
            max_streams=int(options.get("max-streams", 0)),
            max_viewers_per_stream=int(options.get("max-viewers-per-stream", 0)),
        ),
        takeover=bool(options.get("takeover")),
        publisher_timeout_s=float(options.get("publisher-timeout", 30.0)),
        # Ids unique on the box, each telling its worker (DELETE /api/clients).
        client_ids=(1, 1) if worker is None else (worker[0], int(options.get("workers", 1))),
    )
    # Full garbage collections paced by leaves, not joins (rtmpd.gcpacing).
    PacedCollection(admission, reactor).setServiceParent(top)
    for admission_listener in admission_listeners:
        admission.add_listener(admission_listener)
        if isinstance(admission_listener, DoneHookNotifier):
            DoneHookService(admission_listener, reactor).setServiceParent(top)
    if metrics is not None:
        metrics.attach(admission)
    relayed = None
    sampler = siblings = None
    if worker is not None:
        relayed = add_worker_services(top, admission, metrics, admission_listeners, worker,
                                      reactor)
        sampler, siblings = add_sibling_view(top, registry, worker,
                                             int(options.get("workers", 1)), reactor)
    # Relay: forwards out (--forward, and those an on-publish hook's answer
    # names) and pulls in (--pull).
    forwarder = None
    if options.get("forward") or options.get("on-publish"):
        from rtmpd.services.forward import Forwarder

        # A worker's relayed streams are forwarded by the worker publishing them.
        forwarder = Forwarder(admission, reactor, options.get("forward") or [],
                              chunk_size=options["chunk-size"], trust_root=trust_root(options),
                              forward_pulled=worker is None)
        forwarder.setServiceParent(top)
        if metrics is not None:
            metrics.add_collector(forwarder)
    if options.get("pull"):
        from rtmpd.client.pull import make_agent as make_pull_agent
        from rtmpd.services.upstream import Upstream

        roots = trust_root(options)
        upstream = Upstream(admission, make_pull_agent(reactor, trust_root=roots), None, reactor,
                            rules=options["pull"], always=bool(options.get("pull-always")),
                            trust_root=roots)
        upstream.setServiceParent(top)
        if metrics is not None:
            metrics.add_collector(upstream)
    if options.get("directory"):
        # --directory: this origin's streams are claimed in Redis for the
        # gateways; with --workers, by the worker holding each, at the box's
        # one location (any worker serves a pull of it, relaying if need be).
        directory_tap.add_origin_directory(top, admission, options, reactor,
                                           shared=worker is not None)

    rtmp_factory = RtmpServerFactory(
        admission,
        clock=reactor,
        chunk_size=options["chunk-size"],
        handshake_timeout=float(options["handshake-timeout"]),
    )
    cors_publish = bool(options.get("cors-publish"))
    http_root = FlvHttpResource(
        admission, websocket=make_ws_resource(admission, reactor, cors_publish=cors_publish),
        cors_publish=cors_publish,
    )
    http_site = FlvSite(
        http_root, reactor=reactor,
        header_timeout=float(options.get("header-timeout", 10.0)),
        max_header_bytes=int(options.get("max-header-bytes", 16384)),
    )
    web_site = make_web_site(
        root, reactor=reactor, admission=admission, metrics=metrics,
        api_token=options.get("api-token"),
        # Its own count, so /api answers while the media ports are full.
        max_connections=int(options.get("max-connections", 0)),
        header_timeout=float(options.get("header-timeout", 10.0)),
        max_header_bytes=int(options.get("max-header-bytes", 16384)),
        pages=pages_directory(),
        config=page_config(options, __version__.public()),
        worker=None if worker is None else {"index": worker[0], "pid": os.getpid()},
        sampler=sampler, siblings=siblings,
    )

    factories = {"rtmp": rtmp_factory, "http": http_site, "web": web_site}
    listen_with = reactor
    if worker is not None:
        from rtmpd.services.workers import ReusePortReactor

        listen_with = ReusePortReactor(reactor)
        add_relay_listener(top, admission, worker, options, reactor)
        add_view_listener(top, admission, sampler, metrics, worker, reactor)
    for name, factory in factories.items():
        add_listener(top, name, options[name], factory, listen_with)
    for twin, name in TLS_TWINS.items():
        if options.get(twin):
            add_listener(top, twin, options[twin], factories[name], listen_with)
    # Recorders (the disk writer first, so it stops after them).
    from rtmpd.services.recorder import Recorder
    from rtmpd.services.recorders import make_recorders

    for recorder in make_recorders(
        registry,
        reactor,
        root=root,
        formats=options.get("record", "hls"),
        fragment_ms=int(float(options.get("hls-fragment", 2.0)) * 1000),
        window=int(options.get("hls-window", 6)),
        retention=retention_settings(options),
    ):
        if metrics is not None and isinstance(recorder, Recorder):
            recorder.on_failure = metrics.count_recorder_error
        if relayed is not None and isinstance(recorder, Recorder):
            # The worker holding the publisher records it; relays here do not.
            recorder.may_record = _unless_relayed(recorder.may_record, relayed)
        recorder.setServiceParent(top)
    # Last, so it stops first: no publisher feeds a stream while the
    # recorders finalise (rtmpd.services.shutdown).
    from rtmpd.services.shutdown import PublishersFirst

    PublishersFirst(admission, reconnect_url=options.get("reconnect-url")).setServiceParent(top)
    if worker is not None:
        # After the publishers' stop, so it stops first: the names are free
        # before the publishers are asked to reconnect (to another worker).
        # And after --directory's claims, as an authorizer: Redis knows the
        # box by one location, so the box's own directory decides between
        # the workers last, and its busy leaves the Redis claim to the
        # worker that holds the stream (DirectoryClaims.refused).
        from rtmpd.services.directory import DirectoryClaims
        from rtmpd.workerdirectory import worker_location

        claims = DirectoryClaims(admission, top.getServiceNamed("parent-link").directory,
                                 worker_location(worker[0]), reactor,
                                 elsewhere="on another worker of this server")
        claims.setName("box-directory-claims")  # beside --directory's
        claims.setServiceParent(top)
    twins = "".join(
        f", {twin} {options[twin]}" for twin in TLS_TWINS if options.get(twin)
    )
    log.info(
        "rtmpd {version}: rtmp {rtmp}, http {http}, web {web}{twins}, root {root}, "
        "record {record}{worker}",
        version=__version__.public(), rtmp=options["rtmp"], http=options["http"],
        web=options["web"], twins=twins, root=root,
        record=",".join(options.get("record", ())) or "none",
        worker="" if worker is None else f", worker {worker[0]} (pid {os.getpid()})",
    )
    top.registry = registry  # type: ignore[attr-defined]
    top.admission = admission  # type: ignore[attr-defined]
    top.forwarder = forwarder  # type: ignore[attr-defined]
    return top


# -- --workers ------------------------------------------------------------------------


def make_parent(options: Options | dict[str, Any], reactor: Any) -> service.MultiService:
    """The service tree of the parent of ``--workers N``: the workers and
    the box's stream directory they share (:mod:`rtmpd.services.workers`)."""
    from rtmpd.services.workers import WorkerPool
    from rtmpd.workerdirectory import DirectoryServer, SharedDirectory

    count = int(options["workers"])
    top = service.MultiService()
    top.setName("rtmpd")
    directory = DirectoryServer(SharedDirectory())
    listeners = [(name, str(options[name])) for name in ("rtmp", "http", "web", *TLS_TWINS)
                 if options.get(name)]
    pool = WorkerPool(reactor, count, getattr(options, "argv", []), directory,
                      listeners=listeners)
    pool.setServiceParent(top)
    log.info("rtmpd {version}: {count} workers on rtmp {rtmp}, http {http}, web {web}",
             version=__version__.public(), count=count, rtmp=options["rtmp"],
             http=options["http"], web=options["web"])
    top.pool = pool  # type: ignore[attr-defined]
    top.directory = directory  # type: ignore[attr-defined]
    return top


def add_worker_services(
    top: service.MultiService, admission: Any, metrics: Any, admission_listeners: Any,
    worker: tuple[int, str], reactor: Any,
) -> Callable[[Any], bool]:
    """A worker's link to its parent (the directory) and its relays (the
    admission's origin); returns whether a stream here is a relay's."""
    from rtmpd.auth import DoneHookNotifier
    from rtmpd.interfaces import IUpstreamSource
    from rtmpd.protocols import RELAY_PROTOCOL
    from rtmpd.services.upstream import Upstream
    from rtmpd.services.workers import ParentLink, relay_agent
    from rtmpd.workerdirectory import DirectoryClient, worker_location

    index, run_dir = worker
    directory = DirectoryClient()
    ParentLink(reactor, run_dir, index, directory).setServiceParent(top)
    upstream = Upstream(admission, relay_agent(reactor, run_dir), None, reactor,
                        directory=directory, location=worker_location(index))
    upstream.setServiceParent(top)
    if metrics is not None:
        metrics.add_collector(upstream)
    for listener in admission_listeners:
        if isinstance(listener, DoneHookNotifier):
            # A relay is this box's own copy: the publish's done hook is
            # posted by the worker holding it.
            listener.ignored_protocols.update(("upstream", RELAY_PROTOCOL))

    def relayed(stream: Any) -> bool:
        return IUpstreamSource.providedBy(stream.source)

    return relayed


def add_sibling_view(
    top: service.MultiService, registry: StreamRegistry, worker: tuple[int, str],
    count: int, reactor: Any,
) -> tuple[Any, Any]:
    """What a worker's ``/api`` and ``/metrics`` gather the box's answers
    with (:mod:`rtmpd.protocols.siblings`): the bitrate sampler its web port
    and its Unix socket share (run while the worker runs), and its siblings."""
    from rtmpd.protocols.siblings import GATHER_TIMEOUT_S, Siblings
    from rtmpd.services.stats import StatsSampler
    from rtmpd.services.workers import relay_agent, view_socket
    from rtmpd.tap.flvgateway import SamplerService

    sampler = StatsSampler(registry, reactor)
    SamplerService(sampler).setServiceParent(top)
    agent = relay_agent(reactor, worker[1], connect_timeout=GATHER_TIMEOUT_S,
                        socket=view_socket)
    return sampler, Siblings(agent, reactor, worker[0], count)


def add_view_listener(
    top: service.MultiService, admission: Any, sampler: Any, metrics: Any,
    worker: tuple[int, str], reactor: Any,
) -> None:
    """This worker's own ``/api`` lists and ``/metrics``, for its siblings,
    on a Unix socket of its own (:func:`rtmpd.services.workers.view_socket`)."""
    from twisted.internet.endpoints import UNIXServerEndpoint

    from rtmpd.protocols.api import KICK_REASON, client_list, stream_list
    from rtmpd.protocols.siblings import SiblingResource, SiblingSite
    from rtmpd.services.workers import view_socket

    def lists(part: str) -> list[dict[str, Any]]:
        if part == "streams":
            return stream_list(admission, sampler)
        return client_list(admission)

    def kick(client_id: int) -> bool:
        return bool(admission.kick_client(client_id, KICK_REASON))

    site = SiblingSite(SiblingResource(
        lists, None if metrics is None else lambda: metrics.render()[0], kick),
        reactor=reactor)
    path = view_socket(worker[1], worker[0])
    if os.path.exists(path):
        os.unlink(path)  # left by this worker's previous process
    listener = ListenerService("worker", path, UNIXServerEndpoint(reactor, path, mode=0o600),
                               site)
    listener.setName("view")
    listener.setServiceParent(top)


def add_relay_listener(
    top: service.MultiService, admission: Any, worker: tuple[int, str],
    options: Options | dict[str, Any], reactor: Any,
) -> None:
    """HTTP-FLV on the worker's Unix socket, where the other workers relay
    its streams from (plays only, admitted as the server's own)."""
    from twisted.internet.endpoints import UNIXServerEndpoint

    from rtmpd.protocols.flvhttp import FlvHttpResource, FlvSite
    from rtmpd.services.workers import worker_socket

    path = worker_socket(worker[1], worker[0])
    if os.path.exists(path):
        os.unlink(path)  # left by this worker's previous process
    site = FlvSite(
        FlvHttpResource(admission, relay=True), reactor=reactor,
        header_timeout=float(options.get("header-timeout", 10.0)),
        max_header_bytes=int(options.get("max-header-bytes", 16384)),
    )
    listener = ListenerService("worker", path, UNIXServerEndpoint(reactor, path, mode=0o600),
                               site)
    listener.setName("relay")
    listener.setServiceParent(top)


def _unless_relayed(
    may_record: Callable[[Any, str], bool] | None, relayed: Callable[[Any], bool],
) -> Callable[[Any, str], bool]:
    def check(stream: Any, fmt: str) -> bool:
        if relayed(stream):
            return False
        return may_record is None or may_record(stream, fmt)

    return check
