"""A small blocking RTMP client on our pure codec, for end-to-end tests that
need to see exact status codes or the first frames a viewer gets."""

from __future__ import annotations

import socket
import time

from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import ClientConnection


class RtmpTestClient:
    """Connects to ``app`` on a server and waits for events synchronously."""

    def __init__(self, port: int, app: str = "live", timeout_s: float = 15.0,
                 connect: dict[str, object] | None = None) -> None:
        """``connect``: properties added to (or replacing) the connect command object's."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.conn = ClientConnection()
        self.timeout_s = timeout_s
        self.events: list[object] = []
        self.conn.connect(app, f"rtmp://127.0.0.1:{port}/{app}", **(connect or {}))
        self.connect_result = self.wait_for(
            lambda e: isinstance(e, (ev.Connected, ev.ConnectFailed))
        )

    def _pump(self) -> bool:
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            data = b""
        self.conn.receive_data(data)
        while (event := self.conn.next_event()) is not NEED_DATA:
            self.events.append(event)
        out = self.conn.data_to_send()
        if out and data:
            self.sock.sendall(out)
        return bool(data)

    def wait_for(self, match: object) -> object:
        """Read until an event satisfying ``match`` (a predicate) arrives."""
        assert callable(match)
        end = time.monotonic() + self.timeout_s
        seen = 0
        while time.monotonic() < end:
            for event in self.events[seen:]:
                if match(event):
                    return event
            seen = len(self.events)
            if not self._pump():
                for event in self.events[seen:]:
                    if match(event):
                        return event
                raise ConnectionError(f"closed before the event came; got {self.events}")
        raise TimeoutError(f"no matching event; got {self.events}")

    def create_stream(self) -> int:
        self.conn.create_stream()
        created = self.wait_for(lambda e: isinstance(e, ev.StreamCreated))
        assert isinstance(created, ev.StreamCreated)
        return created.stream_id

    def status(self, stream_id: int) -> ev.StatusReceived:
        """The next onStatus on ``stream_id`` (Play.Reset is skipped)."""
        def match(e: object) -> bool:
            return (isinstance(e, ev.StatusReceived) and e.stream_id == stream_id
                    and e.code != "NetStream.Play.Reset")
        event = self.wait_for(match)
        assert isinstance(event, ev.StatusReceived)
        self.events.remove(event)
        return event

    def publish(self, name: str) -> str:
        """Publish ``name``; the status code the server answered."""
        stream_id = self.create_stream()
        self.conn.publish(stream_id, name)
        return self.status(stream_id).code

    def play(self, name: str) -> str:
        stream_id = self.create_stream()
        self.conn.play(stream_id, name)
        return self.status(stream_id).code

    def media(self, count: int) -> list[ev.MediaReceived]:
        """The first ``count`` audio/video messages received."""
        end = time.monotonic() + self.timeout_s
        while time.monotonic() < end:
            got = [e for e in self.events if isinstance(e, ev.MediaReceived)]
            if len(got) >= count:
                return got[:count]
            if not self._pump():
                break
        raise TimeoutError(f"only {len(got)} media messages")

    def close(self) -> None:
        self.sock.close()
