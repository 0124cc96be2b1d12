"""``/metrics`` and ``/api`` lists for the whole box under ``--workers``
(rtmpd.protocols.siblings): the worker a request reaches gathers its
siblings' own answers, merges them (a ``worker`` label on every sample, a
``"worker"`` on every item) and names the siblings that did not answer in
time. A fake Agent plays the siblings' Unix sockets; time is a Clock."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from rtmpd.admission import Admission
from rtmpd.protocols.api import ApiResource, MetricsResource
from rtmpd.protocols.siblings import (
    GATHER_TIMEOUT_S,
    MISSING_HEADER,
    SiblingResource,
    Siblings,
    SiblingSite,
)
from rtmpd.services.stats import Metrics
from tests.unit.test_api import Server, call, header


class Response:
    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    """Each sibling's answer by URL; a URL it has none for never answers,
    a Failure fails."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[bytes] = []

    def request(self, method: bytes, uri: bytes, *args: Any) -> defer.Deferred[Any]:
        self.asked.append(uri)
        answer = self.answers.get(uri.decode())
        if answer is None:
            return defer.Deferred()
        if isinstance(answer, Failure):
            return defer.fail(answer)
        return defer.succeed(answer)


def get(resource: Any, path: str) -> DummyRequest:
    request = DummyRequest(path.lstrip("/").encode().split(b"/"))
    request.method = b"GET"
    request.client = IPv4Address("TCP", "127.0.0.1", 40000)
    request.render(getChildForRequest(resource, request))  # type: ignore[no-untyped-call]
    return request


def json_of(request: DummyRequest) -> Any:
    return json.loads(b"".join(request.written))


def test_api_lists_are_the_union_of_every_workers_with_the_worker_of_each_item() -> None:
    box = Server()
    agent = FakeAgent({
        "http://worker-2/.worker/streams": Response(200, json.dumps({"streams": [
            {"app": "live", "name": "other", "upstream": None}]}).encode()),
        "http://worker-3/.worker/streams": Response(200, b'{"streams": []}'),
    })
    siblings = Siblings(agent, Clock(), 1, 3)
    api = ApiResource(box.admission, box.sampler, token=None,
                      worker={"index": 1, "pid": 42}, siblings=siblings)
    request = get(api, "streams")
    assert request.finished
    answer = json_of(request)
    assert [(s["name"], s["worker"]) for s in answer["streams"]] == [("cam", 1), ("other", 2)]
    assert answer["worker"] == {"index": 1, "pid": 42}
    assert answer["workers"] == {"count": 3, "answered": [1, 2, 3], "missing": []}
    assert header(request, MISSING_HEADER) is None
    assert sorted(agent.asked) == [b"http://worker-2/.worker/streams",
                                   b"http://worker-3/.worker/streams"]


def test_a_sibling_that_does_not_answer_in_time_is_left_out_and_named() -> None:
    box = Server()
    clock = Clock()
    agent = FakeAgent({
        "http://worker-3/.worker/clients": Failure(ConnectionRefusedError()),
        "http://worker-4/.worker/clients": Response(500, b"oops"),
        "http://worker-5/.worker/clients": Response(200, b"not json"),
        "http://worker-6/.worker/clients": Response(200, b'{"clients": [1, 2]}'),
    })  # worker 2 never answers
    api = ApiResource(box.admission, box.sampler, token=None,
                      siblings=Siblings(agent, clock, 1, 6))
    request = get(api, "clients")
    assert not request.finished
    clock.advance(GATHER_TIMEOUT_S)
    answer = json_of(request)
    assert answer["workers"] == {"count": 6, "answered": [1], "missing": [2, 3, 4, 5, 6]}
    assert header(request, MISSING_HEADER) == b"2,3,4,5,6"
    assert {c["worker"] for c in answer["clients"]} == {1}
    assert len(answer["clients"]) == len(box.admission.clients)


def test_metrics_label_every_sample_with_its_worker_and_count_the_workers_up() -> None:
    box = Server()
    other = Metrics(box.registry)  # a sibling's exposition: same families
    agent = FakeAgent({
        "http://worker-1/.worker/metrics": Response(200, other.render()[0]),
        "http://worker-4/.worker/metrics": Response(200, b"rtmpd_streams{{{ 1\n"),
    })
    clock = Clock()
    page = MetricsResource(box.metrics, token=None, siblings=Siblings(agent, clock, 2, 4))
    request = get(page, "")
    clock.advance(GATHER_TIMEOUT_S)  # worker 3 never answers, 4's answer is unusable
    assert header(request, MISSING_HEADER) == b"3,4"
    families = {f.name: f for f in text_string_to_metric_families(
        b"".join(request.written).decode())}
    assert {s.labels["worker"] for s in families["rtmpd_streams"].samples} == {"1", "2"}
    for name, family in families.items():
        if not name.startswith("rtmpd_workers"):
            assert all(s.labels.get("worker") in ("1", "2") for s in family.samples), name
    assert families["rtmpd_workers"].samples[0].value == 4
    assert families["rtmpd_workers_up"].samples[0].value == 2


def test_a_request_gone_before_the_gathering_ends_is_not_written() -> None:
    box = Server()
    clock = Clock()
    api = ApiResource(box.admission, box.sampler, token=None,
                      siblings=Siblings(FakeAgent({}), clock, 1, 2))
    request = get(api, "streams")
    request.processingFailed(Failure(ConnectionError("the client left")))  # type: ignore[no-untyped-call]
    clock.advance(GATHER_TIMEOUT_S)
    assert request.written == []


def test_a_worker_serves_its_own_lists_and_metrics_to_its_siblings() -> None:
    lists = {"streams": [{"name": "cam"}], "clients": [{"id": 7}]}
    page = SiblingResource(lambda part: lists[part], lambda: b"# metrics\n")
    assert json_of(get(page, "streams")) == {"streams": [{"name": "cam"}]}
    assert json_of(get(page, "clients")) == {"clients": [{"id": 7}]}
    assert b"".join(get(page, "metrics").written) == b"# metrics\n"
    assert get(page, "nothing").responseCode == 404
    without_metrics = SiblingResource(lambda part: lists[part], None)
    assert get(without_metrics, "metrics").responseCode == 404
    site = SiblingSite(page, reactor=Clock())
    assert site.getResourceFor(DummyRequest([b".worker", b"streams"])) is page


def test_without_siblings_the_answer_is_this_workers_alone() -> None:
    box = Server()
    request = get(ApiResource(box.admission, box.sampler, token=None), "streams")
    assert "workers" not in json_of(request)
    assert request.finished  # at once, as with one process


def test_client_ids_are_dealt_round_the_workers_and_a_delete_goes_to_the_owner() -> None:
    box = Server()
    worker_2_of_3 = Admission(box.registry, publisher_timeout_s=0, client_ids=(2, 3))
    ids = [worker_2_of_3.open_connection("192.0.2.1", 5000 + i, "rtmp", lambda _: None)
           for i in range(3)]
    assert ids == [2, 5, 8]
    clock = Clock()
    agent = FakeAgent({
        "http://worker-1/.worker/clients/7": Response(204, b""),
        "http://worker-1/.worker/clients/10": Response(404, b""),
        "http://worker-3/.worker/clients/9": Failure(ConnectionRefusedError()),
    })  # client 4 is worker 1's too: it never answers about it
    api = ApiResource(worker_2_of_3, box.sampler, token=None,
                      siblings=Siblings(agent, clock, 2, 3))
    # Client 7 is worker 1's (7 = 1 + 2 * 3): asked of it, which closed it.
    assert call(api, b"DELETE", "clients/7").responseCode == 204
    assert agent.asked == [b"http://worker-1/.worker/clients/7"]
    assert json_of(call(api, b"DELETE", "clients/10"))["error"] == "no client 10"
    unanswered = call(api, b"DELETE", "clients/4")
    refused = call(api, b"DELETE", "clients/9")
    clock.advance(GATHER_TIMEOUT_S)
    for request, owner in ((unanswered, 1), (refused, 3)):
        assert request.responseCode == 503
        assert json_of(request)["error"].startswith(
            f"client {request.postpath[-1].decode()} is worker {owner}'s, which did not answer")
    # This worker's own: closed here, without asking anyone.
    assert call(api, b"DELETE", "clients/5").responseCode == 204
    assert json_of(call(api, b"DELETE", "clients/11"))["error"] == "no client 11"
    assert len(agent.asked) == 4


def test_a_worker_closes_its_own_clients_for_the_sibling_asking() -> None:
    kicked: list[int] = []

    def kick(client_id: int) -> bool:
        kicked.append(client_id)
        return client_id == 7

    view = SiblingResource(lambda part: [], None, kick)
    assert call(view, b"DELETE", "clients/7").responseCode == 204
    assert call(view, b"DELETE", "clients/8").responseCode == 404
    assert call(view, b"DELETE", "clients/x").responseCode == 404
    assert call(view, b"DELETE", "streams/live").responseCode == 404
    assert kicked == [7, 8]
