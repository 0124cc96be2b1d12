"""``twistd flvgateway``: an edge that pulls each stream once from an
upstream (an rtmpd origin, or another gateway) over HTTP-FLV and serves it to
any number of viewers over HTTP-FLV and WS-FLV (``ARCHITECTURE.md`` §7, §9).

Viewers use the origin's URLs on ``--listen``: ``GET /{app}/{stream}.flv``,
``ws://…/{app}/{stream}.flv``, ``HEAD``, with the same status and close
codes; ``/api/`` and ``/metrics`` are on the same port. The registry,
fan-out, GOP cache, admission and limits are rtmpd's own; the upstream is
just another source (:mod:`rtmpd.services.upstream`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application import service
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import resource, server
from zope.interface import implementer

from rtmpd._version import __version__
from rtmpd.admission import Action, Decision, deny
from rtmpd.gcpacing import PacedCollection
from rtmpd.interfaces import IAuthorizer
from rtmpd.registry import StreamRegistry
from rtmpd.tap import directory as directory_tap
from rtmpd.tap import rtmpd as rtmpd_tap
from rtmpd.viewerlog import ViewerLogService

log = Logger()

#: Options that mean the same as rtmpd's, with rtmpd's help and checks.
_SHARED = (
    "gop-cache-frames", "gop-cache-bytes", "gop-cache-seconds", "viewer-queue-bytes",
    "merge-ms", "play-key", "sign-secret", "on-play", "on-play-done", "hook-timeout",
    "max-connections", "max-connections-per-ip", "max-streams", "max-viewers-per-stream",
    "header-timeout", "max-header-bytes",
)


#: ... with the help that differs for a gateway.
_HELP = {
    "max-connections": "Most open connections on --listen (0: no limit).",
    "max-connections-per-ip": "Most open connections from one address on --listen "
                              "(0: no limit).",
    "sign-secret": "Playing needs ?expires=UNIX&sig=HEX, the HMAC-SHA256 of "
                   "'play:{app}/{stream}:{expires}' with this secret (rtmpd-sign makes them).",
}


def _shared(names: Sequence[str]) -> list[Sequence[Any]]:
    by_name = {entry[0]: list(entry) for entry in rtmpd_tap.Options.optParameters}
    entries: list[Sequence[Any]] = []
    for name in names:
        entry = by_name[name]
        if name in _HELP:
            entry[3] = _HELP[name]
        entries.append(entry)
    return entries


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 86400:
        raise ValueError("must be 0..86400 seconds")
    return number


class Options(rtmpd_tap.ShortUsageOnError):
    """Command line of ``twistd flvgateway``."""

    command = "flvgateway"

    synopsis = "--upstream http://origin:8501 | --directory redis://host:6379/0 [options]"
    longdesc = (
        "An HTTP-FLV / WS-FLV edge: the first viewer of a stream opens one HTTP-FLV pull "
        "from --upstream (an rtmpd origin or another gateway), or from the origin that "
        "holds the stream in the --directory the origins claim their streams in; every "
        "viewer shares it, with rtmpd's GOP cache, fan-out and limits. The pull "
        "reconnects with backoff while viewers stay, and closes --linger seconds after "
        "the last one leaves."
    )

    optParameters: list[Sequence[Any]] = [
        [
            "listen", None, "tcp:8081",
            "Listener for viewers: HTTP-FLV and WS-FLV /{app}/{stream}.flv, /api/, /metrics.",
        ],
        [
            "upstream", None, None,
            "Where streams come from: http(s)://host:port of an rtmpd --http port or another "
            "gateway (a path prefix and a ?query, e.g. a play key, are kept).",
        ],
        *directory_tap.GATEWAY_OPTIONS,
        [
            "stats-interval", None, 10.0,
            "Seconds between two stats lines in the log (0: none).", _seconds,
        ],
        [
            "linger", None, 5.0,
            "Seconds a stream's upstream pull stays open after its last viewer left.", _seconds,
        ],
        [
            "upstream-timeout", None, 30.0,
            "Seconds without media from the upstream (reconnecting meanwhile) before the "
            "stream ends for its viewers.", rtmpd_tap._positive_float,
        ],
        [
            "open-timeout", None, 10.0,
            "Seconds the first viewer of a stream waits for the upstream's answer and first "
            "frame (else 502).", rtmpd_tap._positive_float,
        ],
        [
            "ca-file", None, None,
            "PEM file of the CAs an https:// upstream's certificate must chain to "
            "(default: the system's CAs).",
        ],
        *_shared(_SHARED),
        [
            "api-token", None, None,
            "Bearer token for /api/ and /metrics (without one, only loopback clients may "
            "use them).",
        ],
    ]

    optFlags: list[Sequence[Any]] = [["no-metrics", None, "Serve no /metrics."]]

    def opt_version(self) -> None:
        """Print rtmpd's version and exit."""
        print(f"flvgateway (rtmpd) {__version__.public()}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        from rtmpd.client.pull import check_upstream

        if bool(self["upstream"]) == bool(self["directory"]):
            raise usage.UsageError(
                "give one of --upstream http://origin:8501 (one origin) and --directory "
                "redis://host:6379/0 (the origins' stream directory)"
                + (", not both" if self["upstream"] else ""))
        if self["upstream"]:
            try:
                check_upstream(self["upstream"])
            except ValueError as e:
                raise usage.UsageError(f"--upstream: {e}") from None
        directory_tap.check_directory(self)
        for name in ("play-key", "sign-secret", "api-token"):
            if self[name] is not None and not str(self[name]).strip():
                raise usage.UsageError(f"--{name} must not be empty")
        self["merge-ms"] = rtmpd_tap.parse_merge_ms(self["merge-ms"])
        rtmpd_tap.check_endpoint("listen", str(self["listen"]))
        if self["ca-file"] is not None:
            rtmpd_tap.check_ca_file(str(self["ca-file"]))


@implementer(IAuthorizer)
class PlayOnly:
    """A gateway takes no publishers (its streams come from the upstream,
    which publishes without asking)."""

    def authorize(self, request: Any) -> Decision:
        if request.action is Action.PUBLISH:
            return deny("this is a gateway: publish to its origin")
        return Decision(True)


class GatewayRoot(resource.Resource):
    """``/api/…`` and ``/metrics`` beside the FLV paths (``/api/x.flv`` is
    still the stream ``x`` of the app ``api``)."""

    def __init__(self, flv: resource.Resource, children: dict[bytes, resource.Resource]) -> None:
        super().__init__()
        self.flv = flv
        self.admin = children

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        rest = request.postpath or []
        child = self.admin.get(path)
        if child is not None and not (len(rest) == 1 and rest[0].endswith(b".flv")):
            return child
        # Everything else is the FLV resource's, whole path included.
        request.postpath = [path, *rest]
        request.prepath = (request.prepath or [])[:-1]
        return self.flv

    def render(self, request: server.Request) -> bytes | int:
        result: bytes | int = self.flv.render(request)
        return result


class SamplerService(service.Service):
    """Runs the ``/api`` bitrate sampler while the gateway runs."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def startService(self) -> None:
        super().startService()
        self.sampler.start()

    def stopService(self) -> None:
        self.sampler.stop()
        super().stopService()


def makeService(options: Options | dict[str, Any], reactor: Any = None) -> service.MultiService:
    """The gateway's service tree: the upstream and the viewers' listener."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    from rtmpd.admission import Admission, Limits
    from rtmpd.auth import DoneHookNotifier, build_authorizers, build_listeners
    from rtmpd.auth import make_agent as make_hook_agent
    from rtmpd.client.pull import make_agent, shown_url
    from rtmpd.protocols.api import ApiResource, MetricsResource
    from rtmpd.protocols.flvhttp import FlvHttpResource, FlvSite
    from rtmpd.protocols.flvws import make_ws_resource
    from rtmpd.services.stats import Metrics, StatsSampler
    from rtmpd.services.upstream import Upstream

    registry = StreamRegistry(reactor, rtmpd_tap.stream_config(options))
    top = service.MultiService()
    top.setName("flvgateway")
    ViewerLogService(registry.viewer_log).setServiceParent(top)

    metrics = None if options.get("no-metrics") else Metrics(registry)
    hooks = ("on-play", "on-play-done")
    hook_agent = make_hook_agent(reactor) if any(options.get(h) for h in hooks) else None
    try:
        authorizers = build_authorizers(
            options, reactor, hook_agent,
            on_latency=metrics.observe_hook if metrics is not None else None,
        )
        listeners = build_listeners(options, reactor, hook_agent)
    except ValueError as e:
        raise SystemExit(f"flvgateway: {e}") from None
    admission = Admission(
        registry,
        authorizers=[PlayOnly(), *authorizers],
        limits=Limits(
            max_connections=int(options.get("max-connections", 0)),
            max_connections_per_ip=int(options.get("max-connections-per-ip", 0)),
            max_streams=int(options.get("max-streams", 0)),
            max_viewers_per_stream=int(options.get("max-viewers-per-stream", 0)),
        ),
        publisher_timeout_s=float(options.get("upstream-timeout", 30.0)),
    )
    # Full garbage collections paced by leaves, not joins (rtmpd.gcpacing).
    PacedCollection(admission, reactor).setServiceParent(top)
    for listener in listeners:
        admission.add_listener(listener)
        if isinstance(listener, DoneHookNotifier):
            rtmpd_tap.DoneHookService(listener, reactor).setServiceParent(top)
    directory = None
    if options.get("directory"):
        directory = directory_tap.make_directory(options, reactor)
        directory.setServiceParent(top)
    upstream = Upstream(
        admission,
        make_agent(reactor, connect_timeout=float(options.get("open-timeout", 10.0)),
                   trust_root=rtmpd_tap.trust_root(options)),
        None if directory is not None else str(options["upstream"]), reactor,
        linger_s=float(options.get("linger", 5.0)),
        open_timeout_s=float(options.get("open-timeout", 10.0)),
        stats_interval_s=float(options.get("stats-interval", 10.0)),
        directory=directory,
    )
    upstream.setServiceParent(top)

    token = options.get("api-token")
    sampler = StatsSampler(registry, reactor)
    admin: dict[bytes, resource.Resource] = {b"api": ApiResource(admission, sampler, token=token)}
    if metrics is not None:
        metrics.attach(admission)
        metrics.add_collector(upstream)
        admin[b"metrics"] = MetricsResource(metrics, token=token)
    flv = FlvHttpResource(admission, websocket=make_ws_resource(admission, reactor))
    SamplerService(sampler).setServiceParent(top)
    site = FlvSite(
        flv, root=GatewayRoot(flv, admin), reactor=reactor,
        header_timeout=float(options.get("header-timeout", 10.0)),
        max_header_bytes=int(options.get("max-header-bytes", 16384)),
    )
    description = str(options["listen"])
    rtmpd_tap.add_listener(top, "listen", description, site, reactor, program="flvgateway")
    log.info(
        "flvgateway {version}: listen {listen}, upstream {upstream}, linger {linger:g} s, "
        "stats every {interval:g} s",
        version=__version__.public(), listen=description,
        upstream=(f"from the stream directory {directory.url}" if directory is not None
                  else shown_url(str(options["upstream"]))),
        linger=float(options.get("linger", 5.0)),
        interval=float(options.get("stats-interval", 10.0)),
    )
    top.registry = registry  # type: ignore[attr-defined]
    top.admission = admission  # type: ignore[attr-defined]
    top.upstream = upstream  # type: ignore[attr-defined]
    return top
