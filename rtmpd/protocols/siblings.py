"""``/metrics`` and ``/api`` for the whole box under ``--workers`` (README,
"All cores of one box").

The kernel hands each connection on the web port to one worker, so without
this a scrape or a dashboard would see one worker's slice, a different one
each time. Each worker serves its own answers, alone, under ``/.worker/``
(:class:`SiblingResource`) on a Unix socket in the box's private run
directory (:func:`rtmpd.services.workers.view_socket`), never on a public
port, and apart from the relays' socket, whose connections count as its
clients. The worker a request reaches asks every sibling there
(:class:`Siblings`, with the relays' Agent mapping ``http://worker-N`` to
those sockets) and merges:

* ``/metrics``: every sample of every worker with a ``worker="N"`` label
  added (``sum by`` gives the box), and ``rtmpd_workers`` /
  ``rtmpd_workers_up``: the workers there should be and those in the answer;
* ``/api/streams`` and ``/api/clients``: the union of the lists, each item
  with its ``"worker"``; ``"workers"`` says which answered;
* ``DELETE /api/clients/{id}``: asked of the worker the id belongs to (ids
  are dealt round the workers), which closes its client.

A sibling that does not answer within :data:`GATHER_TIMEOUT_S` (restarting,
stuck) is left out, not an error: the answer says so in
``X-Rtmpd-Workers-Missing`` (and ``"workers"``, ``rtmpd_workers_up``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server
from twisted.web.client import ResponseDone
from twisted.web.iweb import IAgent

log = Logger()

#: The path segment of the internal answers on a worker's Unix socket.
INTERNAL = b".worker"
#: What a sibling is asked for, below it.
PARTS = ("streams", "clients", "metrics")
#: Seconds a sibling has to answer. A worker at capacity turns its reactor
#: in well under a second (a send pass over 12 000 viewers takes ~0.5 s),
#: and a Prometheus scrape waits 10 s by default: two seconds leave out
#: only a worker that is restarting or stuck.
GATHER_TIMEOUT_S = 2.0
#: Most bytes of one sibling's answer: 30 000 clients listed take ~3 MB,
#: 1 000 streams ~1.5 MB; anything far past that is not an answer.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
#: The header naming the workers left out of an answer ("2,3").
MISSING_HEADER = b"X-Rtmpd-Workers-Missing"


class _Body(protocol.Protocol):
    """A response body, read up to :data:`MAX_ANSWER_BYTES`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER_BYTES:
            if not self.done.called:
                self.done.errback(ValueError(f"answer over {MAX_ANSWER_BYTES} bytes"))
            self._cancel(None)
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, http.PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@dataclass(frozen=True, slots=True)
class Gathered:
    """Each worker's answer (this one's included) by index, of ``count``."""

    answers: dict[int, bytes]
    count: int

    @property
    def missing(self) -> list[int]:
        """The workers left out."""
        return [i for i in range(1, self.count + 1) if i not in self.answers]

    def without(self, index: int) -> Gathered:
        """The same with worker ``index``'s answer left out (unusable)."""
        return Gathered({i: a for i, a in self.answers.items() if i != index}, self.count)


class Siblings:
    """Worker ``index`` of ``count`` asking the others, through ``agent``
    (:func:`rtmpd.services.workers.relay_agent`), each within ``timeout_s``."""

    def __init__(
        self, agent: IAgent, clock: IReactorTime, index: int, count: int,
        *, timeout_s: float = GATHER_TIMEOUT_S,
    ) -> None:
        self.agent = agent
        self.clock = clock
        self.index = index
        self.count = count
        self.timeout_s = timeout_s

    def gather(self, part: str, own: bytes) -> defer.Deferred[Gathered]:
        """Every sibling's ``/.worker/{part}`` beside ``own`` (this worker's);
        fires within ``timeout_s``, never fails."""
        others = [i for i in range(1, self.count + 1) if i != self.index]
        asked = [self._ask(i, part) for i in others]
        d: defer.Deferred[Any] = defer.DeferredList(asked, consumeErrors=True)

        def collect(results: list[tuple[bool, Any]]) -> Gathered:
            answers = {self.index: own}
            for index, (ok, body) in zip(others, results, strict=True):
                if ok:
                    answers[index] = body
            return Gathered(answers, self.count)

        return d.addCallback(collect)

    def kick(self, index: int, client_id: int) -> defer.Deferred[bool]:
        """Ask worker ``index`` to close its client ``client_id``: fires
        with whether it had it; fails when it does not answer in time."""
        url = f"http://worker-{index}/{INTERNAL.decode()}/clients/{client_id}".encode("ascii")
        d: defer.Deferred[Any] = self.agent.request(b"DELETE", url)

        def read(response: Any) -> defer.Deferred[bool]:
            body = _Body()
            response.deliverBody(body)
            code = response.code

            def judge(_: bytes) -> bool:
                if code not in (http.NO_CONTENT, http.NOT_FOUND):
                    raise ValueError(f"answered {code}")
                return bool(code == http.NO_CONTENT)

            return body.done.addCallback(judge)

        d.addCallback(read)
        d.addTimeout(self.timeout_s, self.clock)
        return d

    def _ask(self, index: int, part: str) -> defer.Deferred[bytes]:
        url = f"http://worker-{index}/{INTERNAL.decode()}/{part}".encode("ascii")
        d: defer.Deferred[Any] = self.agent.request(b"GET", url)

        def read(response: Any) -> defer.Deferred[bytes]:
            body = _Body()
            response.deliverBody(body)
            if response.code != http.OK:
                body.done.addCallback(lambda _: _raise(f"answered {response.code}"))
            return body.done

        d.addCallback(read)
        d.addTimeout(self.timeout_s, self.clock)
        return d

    # -- the merged answers -----------------------------------------------------------

    def list_answer(self, part: str, own: list[dict[str, Any]],
                    answer: Callable[[server.Request, dict[str, Any]], bytes],
                    request: server.Request, top: dict[str, Any]) -> int:
        """Answer ``request`` with the union of every worker's ``part``
        list (``own`` is this worker's), each item with its ``"worker"``;
        ``top`` are the answer's other fields, ``answer`` renders it."""
        body = json.dumps({part: own}).encode()
        d = self.gather(part, body)

        def merge(gathered: Gathered) -> bytes:
            items: list[dict[str, Any]] = []
            for index in sorted(gathered.answers):
                try:
                    listed = json.loads(gathered.answers[index])[part]
                    if not isinstance(listed, list) or not all(
                            isinstance(item, dict) for item in listed):
                        raise TypeError(f"{part} is not a list of objects")
                except (ValueError, TypeError, KeyError) as e:
                    log.warn("worker {worker}'s {part} answer is unusable ({error}); left out",
                             worker=index, part=part, error=e)
                    gathered = gathered.without(index)
                    continue
                items.extend({**item, "worker": index} for item in listed)
            _say_missing(request, gathered)
            return answer(request, {
                part: items, **top,
                "workers": {"count": gathered.count, "answered": sorted(gathered.answers),
                            "missing": gathered.missing},
            })

        return _finish_later(request, d.addCallback(merge))

    def metrics_answer(self, own: bytes, request: server.Request) -> int:
        """Answer ``request`` with every worker's metrics, each sample
        labelled with its ``worker``, and the workers up."""
        d = self.gather("metrics", own)

        def merge(gathered: Gathered) -> bytes:
            families: dict[str, Metric] = {}
            for index in sorted(gathered.answers):
                try:
                    parsed = list(text_string_to_metric_families(
                        gathered.answers[index].decode("utf-8")))
                except Exception as e:  # the parser's errors are not all ValueError
                    log.warn("worker {worker}'s metrics are unusable ({error}); left out",
                             worker=index, error=e)
                    gathered = gathered.without(index)
                    continue
                for family in parsed:
                    merged = families.get(family.name)
                    if merged is None:
                        merged = families[family.name] = Metric(
                            family.name, family.documentation, family.type, family.unit)
                    merged.samples.extend(
                        Sample(s.name, {**s.labels, "worker": str(index)}, s.value,
                               s.timestamp, s.exemplar)
                        for s in family.samples)
            families["rtmpd_workers"] = GaugeMetricFamily(
                "rtmpd_workers", "Worker processes of this box (--workers).",
                value=gathered.count)
            families["rtmpd_workers_up"] = GaugeMetricFamily(
                "rtmpd_workers_up", "Workers whose metrics are in this answer.",
                value=len(gathered.answers))
            registry = CollectorRegistry()
            registry.register(_Families(list(families.values())))
            body = generate_latest(registry)
            _say_missing(request, gathered)
            request.setResponseCode(http.OK)
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.setHeader(b"Cache-Control", b"no-store")
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return body

        return _finish_later(request, d.addCallback(merge))


class _Families:
    """Metric families already made, as a collector."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _raise(message: str) -> bytes:
    raise ValueError(message)


def _say_missing(request: server.Request, gathered: Gathered) -> None:
    missing = gathered.missing
    if missing:
        request.setHeader(MISSING_HEADER, ",".join(map(str, missing)).encode("ascii"))


def _finish_later(request: server.Request, d: defer.Deferred[bytes]) -> int:
    """Write the body ``d`` fires with and finish ``request``, unless its
    connection went meanwhile."""
    gone: list[object] = []
    request.notifyFinish().addErrback(gone.append)

    def write(body: bytes) -> None:
        if not gone:
            request.write(body)
            request.finish()

    def failed(failure: Failure) -> None:
        log.failure("gathering the workers' answers failed", failure)
        if not gone:
            request.setResponseCode(http.INTERNAL_SERVER_ERROR)
            request.finish()

    d.addCallbacks(write, failed)
    return server.NOT_DONE_YET


class SiblingResource(resource.Resource):
    """``/.worker/{streams,clients,metrics}`` on a worker's Unix socket:
    this worker's own answers, for the sibling that gathers them. Served
    on that socket only (its access is the socket's, 0600)."""

    isLeaf = True

    def __init__(self, lists: Callable[[str], list[dict[str, Any]]],
                 metrics: Callable[[], bytes] | None,
                 kick: Callable[[int], bool] | None = None) -> None:
        """``lists(part)``: this worker's streams or clients, as ``/api``
        lists them; ``metrics()``: its exposition (None: ``--no-metrics``);
        ``kick(id)``: close this worker's client ``id``, whether it had it
        (``DELETE /.worker/clients/{id}``, for the worker a ``DELETE
        /api/clients/{id}`` reached)."""
        super().__init__()
        self.lists = lists
        self.metrics = metrics
        self.kick = kick

    def render_DELETE(self, request: server.Request) -> bytes:
        parts = request.postpath or []
        raw = parts[1] if len(parts) == 2 and parts[0] == b"clients" else b""
        if self.kick is None or not (raw.isdigit() and len(raw) <= 20):
            request.setResponseCode(http.NOT_FOUND)
            return b""
        request.setResponseCode(http.NO_CONTENT if self.kick(int(raw)) else http.NOT_FOUND)
        return b""

    def render_GET(self, request: server.Request) -> bytes:
        parts = request.postpath or []
        part = parts[0].decode("ascii", "replace") if len(parts) == 1 else ""
        if part == "metrics" and self.metrics is not None:
            body = self.metrics()
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        elif part in ("streams", "clients"):
            body = json.dumps({part: self.lists(part)}, ensure_ascii=False).encode()
            request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        else:
            request.setResponseCode(http.NOT_FOUND)
            return b""
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body


class SiblingSite(server.Site):
    """The site of a worker's view socket: no access log, since the public
    request each of its requests serves is logged by the worker it reached,
    and a scrape would otherwise add a line per sibling."""

    noisy = False
    displayTracebacks = False

    def __init__(self, view: SiblingResource, *, reactor: IReactorTime) -> None:
        root = resource.Resource()
        root.putChild(INTERNAL, view)
        super().__init__(root, reactor=reactor)

    def log(self, request: object) -> None:
        pass
