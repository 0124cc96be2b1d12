"""The admin endpoints on the ``--web`` port: ``/api`` (JSON) and
``/metrics`` (Prometheus).

``/api``::

    GET    /api/streams                   {"streams": [summary, ...]}
    GET    /api/streams/{app}/{stream}    one stream with its viewers, or 404
    DELETE /api/streams/{app}/{stream}    stop its publisher: 204, or 404
    GET    /api/clients                   {"clients": [connection, ...]}
    DELETE /api/clients/{id}              close that connection: 204, or 404

Every answer, errors included, is JSON (``{"error": "..."}``) and is not to
be cached. A wrong method is 405 with ``Allow``.

Under ``--workers`` the lists, and ``/metrics``, are the whole box's,
gathered from the other workers (:mod:`rtmpd.protocols.siblings`); the
rest acts on the worker that answers.

Access (:func:`access_denied`, the same for both): with ``--api-token`` a
request needs ``Authorization: Bearer TOKEN`` (401 otherwise); without one
only loopback clients are served (403 otherwise). A reverse proxy on the
same host makes every client look local: give it a token. No CORS headers:
pages on other origins have no business calling these.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from rtmpd.admission import Admission
from rtmpd.services.stats import Metrics, StatsSampler, stream_detail, stream_summary

if TYPE_CHECKING:
    from rtmpd.protocols.siblings import Siblings

log = Logger()

#: The reason the log line and the publisher's stop line give for a
#: ``DELETE /api/streams/...``.
STOP_REASON = "stopped through the API"
#: ... and for a ``DELETE /api/clients/...``.
KICK_REASON = "closed through the API"

JSON_TYPE = b"application/json; charset=utf-8"


def json_body(request: server.Request, code: int, value: object) -> bytes:
    """Answer ``value`` as JSON with status ``code``: the body to return."""
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    # Errors quote the path asked for: JSON only, never sniffed as HTML.
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def no_content(request: server.Request) -> bytes:
    """Answer 204 (a DELETE that did what it said)."""
    request.setResponseCode(http.NO_CONTENT)
    request.setHeader(b"Cache-Control", b"no-store")
    return b""


def is_loopback(address: object) -> bool:
    """Whether a peer address is this host: 127.0.0.0/8, ::1, or an IPv4
    loopback address mapped into IPv6 (``::ffff:127.0.0.1``)."""
    if not isinstance(address, IPv4Address | IPv6Address):
        return False
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _bearer(request: server.Request) -> bytes | None:
    header = request.getHeader(b"Authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip()


def access_denied(request: server.Request, token: str | None) -> bytes | None:
    """The one access rule of ``/api`` and ``/metrics``: None if the request
    may go on, else the refusal's body (status and headers already set).

    With a token, ``Authorization: Bearer TOKEN`` is required (compared in
    constant time); without one, only loopback peers are served.
    """
    if token is not None:
        given = _bearer(request)
        if given is not None and hmac.compare_digest(given, token.encode()):
            return None
        if given is None:
            challenge = b'Bearer realm="rtmpd"'
            message = "this needs an Authorization: Bearer token (--api-token)"
        else:
            challenge = b'Bearer realm="rtmpd", error="invalid_token"'
            message = "wrong bearer token"
        request.setHeader(b"WWW-Authenticate", challenge)
        return json_body(request, http.UNAUTHORIZED, {"error": message})
    if is_loopback(request.getClientAddress()):
        return None
    return json_body(
        request, http.FORBIDDEN,
        {"error": "only loopback clients are served without a token; "
                  "start rtmpd with --api-token to allow others"},
    )


def _check_token(token: str | None) -> str | None:
    if token is not None and not token:
        raise ValueError("an empty API token would let anyone in; use None for loopback only")
    return token


def _segments(request: server.Request) -> list[str] | None:
    """The path below the resource, decoded (a trailing slash ignored);
    None if it is not UTF-8."""
    parts = list(request.postpath or [])
    if parts and parts[-1] == b"":
        parts.pop()
    try:
        return [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError:
        return None


def _method_not_allowed(request: server.Request, allowed: tuple[bytes, ...]) -> bytes:
    request.setHeader(b"Allow", b", ".join(allowed))
    method = request.method.decode("ascii", "replace")
    return json_body(
        request, http.NOT_ALLOWED,
        {"error": f"method {method} is not allowed here; use {b', '.join(allowed).decode()}"},
    )


def _not_found(request: server.Request, message: str) -> bytes:
    return json_body(request, http.NOT_FOUND, {"error": message})


def _peer(request: server.Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return f"{host}:{getattr(address, 'port', 0)}" if host else str(address)


#: A route's handler: (request, the path's variable parts) -> body, or
#: NOT_DONE_YET (an answer gathered from the other workers).
_Handler = Callable[[server.Request, list[str]], bytes | int]


def stream_list(admission: Admission, sampler: StatsSampler | None) -> list[dict[str, Any]]:
    """The live streams as ``GET /api/streams`` lists them."""
    streams = sorted(admission.registry.streams.values(), key=lambda s: s.path)
    return [stream_summary(s, admission, sampler) for s in streams]


def client_list(admission: Admission) -> list[dict[str, Any]]:
    """The open connections as ``GET /api/clients`` lists them."""
    now = admission.clock.seconds()
    return [
        {
            "id": c.client_id,
            "protocol": c.protocol,
            "address": c.host,
            "port": c.port,
            "connected_s": round(now - c.opened_at, 3),
        }
        for c in sorted(admission.clients.values(), key=lambda c: c.client_id)
    ]


class ApiResource(resource.Resource):
    """``/api``: streams and connections as JSON, and stopping them."""

    isLeaf = True

    def __init__(
        self, admission: Admission, sampler: StatsSampler | None = None,
        *, token: str | None, worker: dict[str, int] | None = None,
        siblings: Siblings | None = None,
    ) -> None:
        """``worker``: under ``--workers``, which worker this is (``index``,
        ``pid``), which the lists say; with ``siblings`` they are the whole
        box's, gathered from the other workers (:mod:`rtmpd.protocols.siblings`)."""
        super().__init__()
        self.admission = admission
        self.sampler = sampler
        self.token = _check_token(token)
        self.worker = worker
        self.siblings = siblings

    def render(self, request: server.Request) -> bytes | int:
        denied = access_denied(request, self.token)
        if denied is not None:
            return denied
        parts = _segments(request)
        routes = None if parts is None else self._routes(parts)
        if routes is None or parts is None:
            shown = b"/".join([b"/api", *(request.postpath or [])])
            return _not_found(
                request, f"no such API path {shown.decode('utf-8', 'replace')[:200]}; "
                         "see /api/streams and /api/clients",
            )
        method = request.method
        if method == b"HEAD":
            method = b"GET"
        handler = routes.get(method)
        if handler is None:
            allowed = tuple(routes)
            if b"GET" in routes:
                allowed = (*allowed, b"HEAD")
            return _method_not_allowed(request, allowed)
        return handler(request, parts)

    def _routes(self, parts: list[str]) -> dict[bytes, _Handler] | None:
        """The methods of the path ``parts``, or None if there is no such path."""
        match parts:
            case ["streams"]:
                return {b"GET": self._list_streams}
            case ["streams", _, _]:
                return {b"GET": self._show_stream, b"DELETE": self._stop_stream}
            case ["clients"]:
                return {b"GET": self._list_clients}
            case ["clients", _]:
                return {b"DELETE": self._kick_client}
        return None

    # -- handlers ------------------------------------------------------------

    def _list_streams(self, request: server.Request, parts: list[str]) -> bytes | int:
        return self._list(request, "streams", stream_list(self.admission, self.sampler))

    def _list(self, request: server.Request, part: str,
              items: list[dict[str, Any]]) -> bytes | int:
        """A list answer (this worker's ``items``, or the box's), with the
        worker that gave it under ``--workers``."""
        top: dict[str, Any] = {} if self.worker is None else {"worker": self.worker}
        if self.siblings is not None:
            return self.siblings.list_answer(
                part, items, lambda r, value: json_body(r, http.OK, value), request, top)
        return json_body(request, http.OK, {part: items, **top})

    def _show_stream(self, request: server.Request, parts: list[str]) -> bytes:
        _, app, name = parts
        stream = self.admission.registry.streams.get((app, name))
        if stream is None:
            return _not_found(request, f"stream {app[:130]}/{name[:130]} is not live")
        return json_body(request, http.OK, stream_detail(stream, self.admission, self.sampler))

    def _stop_stream(self, request: server.Request, parts: list[str]) -> bytes:
        _, app, name = parts
        if not self.admission.kick_publisher(app, name, STOP_REASON):
            return _not_found(request, f"stream {app[:130]}/{name[:130]} is not live")
        # Only names of a live stream get here, so the line holds no junk.
        log.info("DELETE /api/streams/{app}/{name} by {peer}", app=app, name=name,
                 peer=_peer(request))
        return no_content(request)

    def _list_clients(self, request: server.Request, parts: list[str]) -> bytes | int:
        return self._list(request, "clients", client_list(self.admission))

    def _kick_client(self, request: server.Request, parts: list[str]) -> bytes | int:
        raw = parts[1]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 20):
            return _not_found(request, f"no client {raw[:20]!r}: ids are numbers")
        client_id = int(raw)
        owner = self._owner(client_id)
        if owner is not None:
            return self._kick_elsewhere(request, owner, client_id)
        if not self.admission.kick_client(client_id, KICK_REASON):
            return _not_found(request, f"no client {client_id}")
        log.info("DELETE /api/clients/{id} by {peer}", id=client_id, peer=_peer(request))
        return no_content(request)

    def _owner(self, client_id: int) -> int | None:
        """With ``--workers``, the sibling whose client ``client_id`` is (ids
        are dealt round the workers); None when it is this worker's."""
        siblings = self.siblings
        if siblings is None or client_id < 1:
            return None
        owner = (client_id - 1) % siblings.count + 1
        return None if owner == siblings.index else owner

    def _kick_elsewhere(self, request: server.Request, owner: int, client_id: int) -> int:
        """``DELETE /api/clients/{id}`` of a sibling's client: asked of it."""
        assert self.siblings is not None
        peer = _peer(request)
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)

        def answered(kicked: bool) -> None:
            if gone:
                return
            if kicked:
                log.info("DELETE /api/clients/{id} by {peer} (on worker {owner})",
                         id=client_id, peer=peer, owner=owner)
                request.write(no_content(request))
            else:
                request.write(_not_found(request, f"no client {client_id}"))
            request.finish()

        def failed(failure: Failure) -> None:
            if gone:
                return
            request.write(json_body(request, http.SERVICE_UNAVAILABLE, {
                "error": f"client {client_id} is worker {owner}'s, which did not answer "
                         f"({failure.getErrorMessage()})"}))
            request.finish()

        self.siblings.kick(owner, client_id).addCallbacks(answered, failed)
        return server.NOT_DONE_YET


class MetricsResource(resource.Resource):
    """``/metrics``: the Prometheus text exposition."""

    isLeaf = True

    def __init__(self, metrics: Metrics, *, token: str | None,
                 siblings: Siblings | None = None) -> None:
        """With ``siblings`` (``--workers``), the whole box's metrics, each
        sample labelled with its ``worker``."""
        super().__init__()
        self.metrics = metrics
        self.token = _check_token(token)
        self.siblings = siblings

    def render(self, request: server.Request) -> bytes | int:
        denied = access_denied(request, self.token)
        if denied is not None:
            return denied
        if _segments(request) != []:
            return _not_found(request, "metrics are at /metrics")
        if request.method not in (b"GET", b"HEAD"):
            return _method_not_allowed(request, (b"GET", b"HEAD"))
        body, content_type = self.metrics.render()
        if self.siblings is not None:
            return self.siblings.metrics_answer(body, request)
        request.setResponseCode(http.OK)
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body
