"""``rtmpd-push``: publish an FLV or MP4 file to a live server, paced like a live encoder.

::

    rtmpd-push INPUT URL [--speed X] [--loop] [--no-reconnect] [--start SECONDS]

The file is indexed by :mod:`rtmpd.pushsource`; this module paces its tags
(:class:`Pusher`) and sends them over one of three session adapters:

* ``rtmp://host[:port]/{app}/{stream}``: our sans-IO RTMP client
  (:class:`~rtmpd.codec.rtmp.connection.ClientConnection`) under a thin protocol;
* ``http(s)://host[:port]/{app}/{stream}``: one chunked ``POST`` whose body is an FLV
  stream (the server refuses with 400/403/409 before reading it, answers 200 at the end);
* ``ws(s)://host[:port]/{app}/{stream}``: Autobahn client, binary messages of FLV bytes.

Pacing: tag *n* leaves when the reactor clock reaches ``anchor + (dts_n - dts_anchor) / speed``;
all tags due go out in one write. ``--loop`` runs the file again with timestamps continued
(offset by the end of the last tag). A lost connection is retried with exponential backoff
(:data:`BACKOFF_INITIAL_S` doubling to :data:`BACKOFF_MAX_S`; back to the start after a run
of :data:`STABLE_RUN_S`); the new session gets the metadata and sequence headers, then the
tags again from the last keyframe sent (burst up to where it was, then paced), timestamps
unchanged. SIGINT / SIGTERM end the stream the way each protocol expects (RTMP
FCUnpublish + deleteStream, HTTP the last 0-length chunk, WS close 1000).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

from rtmpd import __version__
from rtmpd.codec import amf0
from rtmpd.codec.errors import ProtocolError
from rtmpd.codec.flv import TAG_SCRIPT, encode_header, encode_tag
from rtmpd.codec.rtmp import events as ev
from rtmpd.codec.rtmp import messages as msg
from rtmpd.codec.rtmp.chunk import NEED_DATA
from rtmpd.codec.rtmp.connection import DATA_CSID, ClientConnection
from rtmpd.pushsource import InputError, PushSource, open_source

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamClientEndpoint

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "EXIT_DISCONNECTED",
    "EXIT_INPUT",
    "EXIT_OK",
    "EXIT_REFUSED",
    "PushTarget",
    "Pusher",
    "main",
    "parse_target",
]

EXIT_OK = 0
EXIT_DISCONNECTED = 1
EXIT_INPUT = 2
EXIT_REFUSED = 3

MIN_SPEED = 0.1
MAX_SPEED = 10.0
#: First wait before reconnecting; doubles on each failure up to BACKOFF_MAX_S.
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
#: A session that published this long was a successful run: the backoff starts over.
#: (An HTTP publish looks accepted as soon as TCP connects; a refusal comes right after.)
STABLE_RUN_S = 2.0
#: How long connecting + publishing may take before the attempt is abandoned.
SETUP_TIMEOUT_S = 10.0
#: How long a clean end (FCUnpublish, last chunk, close handshake) may take.
FINISH_TIMEOUT_S = 5.0
#: Progress redraw interval on a terminal, and log interval otherwise.
PROGRESS_TTY_S = 1.0
PROGRESS_LOG_S = 5.0

_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")
_DEFAULT_PORTS = {"rtmp": 1935, "http": 80, "https": 443, "ws": 80, "wss": 443}

#: One tag to send: (FLV tag type, timestamp in ms, body).
Tag = tuple[int, int, bytes]


class UsageError(Exception):
    """A bad command-line value; the message is one line."""


# -- target URL -----------------------------------------------------------------------


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
        return self.scheme in ("https", "wss")

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
        raise UsageError(f"URL scheme {parts.scheme!r} is not rtmp, http, https, ws or wss")
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
        pieces = value.split("/") if what == "app" and scheme == "rtmp" else [value]
        if not all(_NAME.fullmatch(p) for p in pieces):
            raise UsageError(f"{what} name {value!r} is not [A-Za-z0-9_-]{{1,128}}")
    return PushTarget(scheme, parts.hostname, port, app, stream, parts.query)


# -- sessions: what the pusher sends through -----------------------------------------


class Session(Protocol):
    """One connection publishing the stream."""

    def send_tags(self, tags: Sequence[Tag]) -> None:
        """Send tags (metadata, headers, frames) in order, in as few writes as possible."""

    def finish(self) -> Deferred[None]:
        """End the stream cleanly; fires when the connection is closed."""

    def abort(self) -> None:
        """Drop the connection at once (no callbacks follow)."""


class SessionListener(Protocol):
    """What a session reports to (the :class:`Pusher`)."""

    def session_ready(self, session: Session) -> None:
        """Publishing was accepted: tags may be sent."""

    def session_lost(self, session: Session | None, reason: str, permanent: bool) -> None:
        """The attempt failed or the connection dropped; ``permanent``: do not retry."""

    def session_writable(self, writable: bool) -> None:
        """The socket buffer filled up (False) or drained (True)."""


#: Starts one connection attempt reporting to the listener.
Connector = Callable[[SessionListener], None]


# -- the pacing core ------------------------------------------------------------------


class Pusher:
    """Paces a :class:`PushSource` over sessions made by ``connect`` (see the module doc).

    ``clock`` is the reactor (or a ``task.Clock`` in tests). ``on_exit(status, message)``
    is called once, when the push is over.
    """

    def __init__(
        self,
        source: PushSource,
        connect: Connector,
        clock: IReactorTime,
        on_exit: Callable[[int, str], None],
        *,
        speed: float = 1.0,
        loop: bool = False,
        start_ms: int = 0,
        reconnect: bool = True,
    ) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise UsageError(f"speed {speed} is outside {MIN_SPEED}..{MAX_SPEED}")
        self._source = source
        self._connect_fn = connect
        self._clock = clock
        self._on_exit = on_exit
        self._speed = speed
        self._loop_enabled = loop
        self._reconnect = reconnect
        self._tags = source.tags
        self._period = source.period_ms
        # Next tag to send: (index, pass through the file).
        self._index = source.keyframe_index(start_ms)
        self._pass = 0
        # Where a new session starts: the last keyframe sent.
        self._resume = (self._index, self._pass)
        self._session: Session | None = None
        self._ready_at = 0.0
        self._anchor_wall = 0.0
        self._anchor_ts = 0.0
        self._timer: IDelayedCall | None = None
        self._paused = False
        self._sent_headers: dict[int, object] = {}
        self._backoff = BACKOFF_INITIAL_S
        self._finishing = False
        self._done = False
        #: Media bytes handed to sessions (tag bodies).
        self.bytes_sent = 0
        #: Connection attempts after the first.
        self.reconnects = 0
        #: File position of the last tag sent, ms from the file's start.
        self.position_ms = max(0, self._tags[self._index].dts_ms - source.start_ms)
        #: Called with one line of news (reconnecting, refused); set by the CLI.
        self.notify: Callable[[str], None] = lambda line: None

    @property
    def duration_ms(self) -> int:
        return self._source.duration_ms

    @property
    def backoff_s(self) -> float:
        """The wait before the next reconnect attempt."""
        return self._backoff

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> None:
        """Make the first connection attempt."""
        self._connect_fn(self)

    def stop(self) -> None:
        """End the push cleanly (SIGINT): finish the session, then exit 0."""
        if self._done:
            return
        if self._finishing:  # asked twice: do not wait any longer
            if self._session is not None:
                self._session.abort()
            self._exit(EXIT_OK, "")
            return
        self._finish()

    # -- SessionListener ------------------------------------------------------------

    def session_ready(self, session: Session) -> None:
        if self._done or self._finishing:
            session.abort()
            return
        self._session = session
        self._ready_at = self._clock.seconds()
        self._paused = False
        # The burst up to where we were, then paced from there.
        self._anchor_ts = self._timestamp(self._index, self._pass)
        self._anchor_wall = self._clock.seconds()
        self._index, self._pass = self._resume
        start_ts = self._timestamp(self._index, self._pass)
        source = self._source
        first: list[Tag] = [(TAG_SCRIPT, 0, source.metadata)]
        self._sent_headers = {}
        for header in source.headers_at(self._index):
            self._sent_headers[header.tag_type] = header
            first.append((header.tag_type, start_ts, source.body(header)))
        self._send(first)
        self._pump()

    def session_lost(self, session: Session | None, reason: str, permanent: bool) -> None:
        if self._done:
            return
        current = self._session
        if session is not None and current is not None and session is not current:
            return  # a stale attempt
        self._cancel_timer()
        self._session = None
        if self._finishing:
            return  # the finish Deferred decides
        if permanent:
            self._exit(EXIT_REFUSED, f"publish refused: {reason}")
            return
        if not self._reconnect:
            self._exit(EXIT_DISCONNECTED, f"disconnected: {reason}")
            return
        if current is not None and self._clock.seconds() - self._ready_at >= STABLE_RUN_S:
            self._backoff = BACKOFF_INITIAL_S
        if not self._source.has_video:
            self._resume = (self._index, self._pass)
        delay = self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        self.notify(f"{reason}; reconnecting in {delay:g} s")
        self._timer = self._clock.callLater(delay, self._retry)

    def session_writable(self, writable: bool) -> None:
        if self._done or self._session is None or writable != self._paused:
            return
        if not writable:
            self._paused = True
            self._cancel_timer()
            return
        self._paused = False
        # Pace on from here: the time spent blocked is not made up in a burst.
        self._anchor_ts = self._timestamp(self._index, self._pass)
        self._anchor_wall = self._clock.seconds()
        self._pump()

    # -- internals ------------------------------------------------------------------

    def _retry(self) -> None:
        self._timer = None
        self.reconnects += 1
        self._connect_fn(self)

    def _timestamp(self, index: int, pass_: int) -> int:
        if index >= len(self._tags):
            index, pass_ = 0, pass_ + 1
        return self._tags[index].dts_ms + pass_ * self._period

    def _send(self, tags: list[Tag]) -> None:
        assert self._session is not None
        self._session.send_tags(tags)
        self.bytes_sent += sum(len(body) for _, _, body in tags)

    def _pump(self) -> None:
        self._timer = None
        if self._session is None or self._paused or self._done or self._finishing:
            return
        tags = self._tags
        count = len(tags)
        now = self._clock.seconds()
        # 1 µs of slack so a timer firing at its exact due time is not a float off.
        due = self._anchor_ts + (now - self._anchor_wall) * 1000.0 * self._speed + 1e-3
        batch: list[Tag] = []
        body = self._source.body
        while True:
            if self._index >= count:
                if not self._loop_enabled:
                    break
                self._index, self._pass = 0, self._pass + 1
            tag = tags[self._index]
            ts = tag.dts_ms + self._pass * self._period
            if ts > due:
                break
            if tag.sequence_header:
                if self._sent_headers.get(tag.tag_type) is tag:
                    self._index += 1
                    continue
                self._sent_headers[tag.tag_type] = tag
            if tag.keyframe:
                self._resume = (self._index, self._pass)
            batch.append((tag.tag_type, ts, body(tag)))
            self.position_ms = tag.dts_ms - self._source.start_ms
            self._index += 1
        if batch:
            self._send(batch)
        if self._index >= count and not self._loop_enabled:
            self._finish()
            return
        next_ts = self._timestamp(self._index, self._pass)
        delay = (next_ts - self._anchor_ts) / (1000.0 * self._speed) - (now - self._anchor_wall)
        self._timer = self._clock.callLater(max(0.0, delay), self._pump)

    def _finish(self) -> None:
        self._cancel_timer()
        self._finishing = True
        session = self._session
        if session is None:
            self._exit(EXIT_OK, "")
            return
        d = session.finish()
        d.addBoth(lambda _: self._exit(EXIT_OK, ""))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _exit(self, status: int, message: str) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        self._on_exit(status, message)


# -- progress -------------------------------------------------------------------------


def _clock_text(ms: int) -> str:
    seconds = max(0, ms) // 1000
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressDisplay:
    """Position / duration, bitrate and reconnects: one line redrawn with ``\\r`` on a
    terminal, a plain line every :data:`PROGRESS_LOG_S` otherwise."""

    def __init__(self, pusher: Pusher, clock: IReactorTime, out: IO[str], *, tty: bool) -> None:
        self._pusher = pusher
        self._clock = clock
        self._out = out
        self._tty = tty
        self._last_bytes = 0
        self._last_time = clock.seconds()
        self._drawn = False
        self._timer: IDelayedCall | None = None

    @property
    def interval_s(self) -> float:
        return PROGRESS_TTY_S if self._tty else PROGRESS_LOG_S

    def start(self) -> None:
        self._timer = self._clock.callLater(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._end_line()

    def line(self) -> str:
        """The progress text now (and restart the bitrate window)."""
        p = self._pusher
        now = self._clock.seconds()
        elapsed = max(now - self._last_time, 1e-9)
        kbit_s = (p.bytes_sent - self._last_bytes) * 8 / 1000 / elapsed
        self._last_bytes, self._last_time = p.bytes_sent, now
        return (
            f"{_clock_text(p.position_ms)} / {_clock_text(p.duration_ms)}  "
            f"{kbit_s:7.0f} kbit/s  reconnects {p.reconnects}"
        )

    def message(self, text: str) -> None:
        """A line of news, printed above the progress line."""
        self._end_line()
        self._out.write(f"rtmpd-push: {text}\n")
        self._out.flush()

    def _tick(self) -> None:
        self._timer = self._clock.callLater(self.interval_s, self._tick)
        text = self.line()
        if self._tty:
            self._out.write(f"\r{text}\x1b[K")
            self._drawn = True
        else:
            self._out.write(f"rtmpd-push: {text}\n")
        self._out.flush()

    def _end_line(self) -> None:
        if self._drawn:
            self._out.write("\n")
            self._drawn = False


# -- session adapters -----------------------------------------------------------------


def _no_delay(transport: Any) -> None:
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


@implementer(IPushProducer)
class _SessionBase:
    """Setup and finish timeouts, the finish Deferred and backpressure, for all three."""

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime):
        self.target = target
        self.listener = listener
        self.clock = clock
        self.ready = False
        self.finishing = False
        self.aborted = False
        self.reason = ""
        self.permanent = False
        self.finished: Deferred[None] = Deferred()
        self._timer: IDelayedCall | None = None

    # subclasses provide these
    def _transport(self) -> Any:
        raise NotImplementedError

    def send_tags(self, tags: Sequence[Tag]) -> None:
        raise NotImplementedError

    def finish(self) -> Deferred[None]:
        raise NotImplementedError

    def _started(self) -> None:
        _no_delay(self._transport())
        self._timer = self.clock.callLater(SETUP_TIMEOUT_S, self._timed_out, "publish setup")

    def _mark_ready(self) -> None:
        if self.ready or self.finishing or self.aborted:
            return
        self.ready = True
        self._cancel_timer()
        self._transport().registerProducer(self, True)
        self.listener.session_ready(self)

    def _fail(self, reason: str, *, permanent: bool = False) -> None:
        if not self.reason:
            self.reason, self.permanent = reason, permanent

    def _timed_out(self, what: str) -> None:
        self._timer = None
        limit = FINISH_TIMEOUT_S if what == "finish" else SETUP_TIMEOUT_S
        self._fail(f"{what} took over {limit:g} s")
        self._transport().abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _begin_finish(self) -> None:
        self.finishing = True
        self._cancel_timer()
        self._timer = self.clock.callLater(FINISH_TIMEOUT_S, self._timed_out, "finish")

    def _lost(self, default_reason: str) -> None:
        self._cancel_timer()
        if self.finishing or self.aborted:
            if not self.finished.called:
                self.finished.callback(None)
            return
        self.listener.session_lost(self, self.reason or default_reason, self.permanent)

    def abort(self) -> None:
        self.aborted = True
        self._cancel_timer()
        transport = self._transport()
        if transport is not None:
            transport.abortConnection()

    # IPushProducer
    def pauseProducing(self) -> None:
        if self.ready and not self.finishing:
            self.listener.session_writable(False)

    def resumeProducing(self) -> None:
        if self.ready and not self.finishing:
            self.listener.session_writable(True)

    def stopProducing(self) -> None:
        pass


_SET_DATA_FRAME = amf0.encode("@setDataFrame")


class RtmpPublishProtocol(protocol.Protocol, _SessionBase):
    """Publishes over RTMP with :class:`ClientConnection`: connect, releaseStream,
    FCPublish, createStream, publish; ends with FCUnpublish and deleteStream."""

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime):
        _SessionBase.__init__(self, target, listener, clock)
        self.conn = ClientConnection()
        self.stream_id = 0

    def _transport(self) -> Any:
        return self.transport

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def connectionMade(self) -> None:
        self._started()
        t = self.target
        self.conn.connect(t.app, f"rtmp://{t.authority}/{t.app}")
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not NEED_DATA:
                self._on_event(event)
        except ProtocolError as e:
            self._fail(f"RTMP error from the server: {e}")
            self._flush()
            self._transport().abortConnection()
            return
        self._flush()

    def _publish_name(self) -> str:
        t = self.target
        return f"{t.stream}?{t.query}" if t.query else t.stream

    def _on_event(self, event: object) -> None:
        name = self._publish_name()
        if isinstance(event, ev.Connected):
            self.conn.send_command("releaseStream", None, name)
            self.conn.send_command("FCPublish", None, name)
            self.conn.create_stream()
        elif isinstance(event, ev.ConnectFailed):
            self._fail(f"connect refused: {event.code} {event.description}".strip(),
                       permanent=True)
            self._transport().loseConnection()
        elif isinstance(event, ev.StreamCreated) and not self.stream_id:
            self.stream_id = event.stream_id
            self.conn.publish(self.stream_id, name)
        elif isinstance(event, ev.StatusReceived):
            if event.code == "NetStream.Publish.Start":
                self._flush()
                self._mark_ready()
            elif event.level == "error" or event.code.endswith(("BadName", "Rejected", "Failed")):
                # BadName for a valid name means busy (our old session may linger): retry.
                busy = event.code == "NetStream.Publish.BadName"
                self._fail(f"{event.code} {event.description}".strip(), permanent=not busy)
                self._transport().loseConnection()

    def send_tags(self, tags: Sequence[Tag]) -> None:
        conn, sid = self.conn, self.stream_id
        for tag_type, ts, body in tags:
            ts &= 0xFFFFFFFF
            if tag_type == TAG_SCRIPT:
                payload = _SET_DATA_FRAME + body if body.startswith(_ON_METADATA) else body
                conn.send_message(DATA_CSID, msg.DATA_AMF0, sid, ts, payload)
            else:
                conn.send_media(sid, tag_type, ts, body)
        self._flush()

    def finish(self) -> Deferred[None]:
        if not self.finishing:
            self._begin_finish()
            if self.stream_id:
                self.conn.send_command("FCUnpublish", None, self._publish_name())
                self.conn.delete_stream(self.stream_id)
            self._flush()
            if self.transport is not None:
                self.transport.loseConnection()
        return self.finished

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost(f"connection lost ({reason.getErrorMessage()})")


_ON_METADATA = amf0.encode("onMetaData")


class HttpPublishProtocol(protocol.Protocol, _SessionBase):
    """Publishes with one chunked HTTP POST; any response before the end is a refusal."""

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime,
                 *, has_audio: bool, has_video: bool):
        _SessionBase.__init__(self, target, listener, clock)
        self._header: bytes | None = encode_header(has_audio=has_audio, has_video=has_video)
        self._response = b""
        self.status = 0

    def _transport(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        self._started()
        t = self.target
        assert self.transport is not None
        self.transport.write(
            f"POST {t.path} HTTP/1.1\r\nHost: {t.authority}\r\n"
            f"User-Agent: rtmpd-push/{__version__.public()}\r\n"
            "Content-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        # The server says nothing while it accepts the body; a refusal arrives as a response.
        self._mark_ready()

    def send_tags(self, tags: Sequence[Tag]) -> None:
        parts = [encode_tag(tag_type, ts, body) for tag_type, ts, body in tags]
        if self._header is not None:
            parts.insert(0, self._header)
            self._header = None
        data = b"".join(parts)
        if data and self.transport is not None:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def dataReceived(self, data: bytes) -> None:
        self._response += data
        if self.status or b"\r\n" not in self._response:
            if self.status and self._parse_refusal():
                self._transport().loseConnection()
            return
        status_line = self._response.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        try:
            self.status = int(fields[1])
        except (IndexError, ValueError):
            self.status = 999
        if self.finishing:
            self._transport().loseConnection()
            return
        if self._parse_refusal():
            self._transport().loseConnection()

    def _parse_refusal(self) -> bool:
        """Note why the server refused; True once the reason is known."""
        if self.finishing:
            return True
        head, sep, body = self._response.partition(b"\r\n\r\n")
        if not sep and len(self._response) < 16384:
            return False
        text = body.decode("utf-8", "replace").strip().splitlines()
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        reason = status_line.split(" ", 1)[1] if " " in status_line else status_line
        if text:
            reason = f"{reason}: {text[0]}"
        # 409: the name is busy (our own lost session may linger): worth retrying.
        self._fail(f"HTTP {reason}", permanent=self.status in (400, 401, 403, 404))
        return True

    def finish(self) -> Deferred[None]:
        if not self.finishing:
            self._begin_finish()
            if self.transport is not None:
                self.transport.write(b"0\r\n\r\n")
        return self.finished

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost(f"connection lost ({reason.getErrorMessage()})")


#: WS close codes (rtmpd's, as other FLV servers use them) that retrying will not change.
_WS_PERMANENT = frozenset({4400, 4401, 4403, 4404})


class WsPublishProtocol(WebSocketClientProtocol, _SessionBase):  # type: ignore[misc]
    """Publishes over WebSocket: binary messages of FLV bytes, one per pacing batch."""

    def __init__(self, target: PushTarget, listener: SessionListener, clock: IReactorTime,
                 *, has_audio: bool, has_video: bool):
        WebSocketClientProtocol.__init__(self)
        _SessionBase.__init__(self, target, listener, clock)
        self._header: bytes | None = encode_header(has_audio=has_audio, has_video=has_video)

    def _transport(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        WebSocketClientProtocol.connectionMade(self)
        self._started()

    def onOpen(self) -> None:
        self._mark_ready()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        pass  # the server has nothing to say to a publisher

    def send_tags(self, tags: Sequence[Tag]) -> None:
        parts = [encode_tag(tag_type, ts, body) for tag_type, ts, body in tags]
        if self._header is not None:
            parts.insert(0, self._header)
            self._header = None
        if parts:
            self.sendMessage(b"".join(parts), isBinary=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if code is not None and code != 1000 and code != 1006:
            self._fail(f"WebSocket closed with {code} {reason or ''}".strip(),
                       permanent=code in _WS_PERMANENT)
        elif not self.ready:
            self._fail(f"WebSocket handshake failed ({reason or 'no reason'})")

    def finish(self) -> Deferred[None]:
        if not self.finishing:
            self._begin_finish()
            self.sendClose(1000, "end of stream")
        return self.finished

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        WebSocketClientProtocol.connectionLost(self, reason)
        self._lost(f"connection lost ({reason.getErrorMessage()})")


class _WsFactory(WebSocketClientFactory):
    def __init__(self, make: Callable[[], WsPublishProtocol], url: str) -> None:
        super().__init__(url, useragent=f"rtmpd-push/{__version__.public()}")
        self.setProtocolOptions(openHandshakeTimeout=SETUP_TIMEOUT_S,
                                closeHandshakeTimeout=FINISH_TIMEOUT_S)
        self._make = make

    def buildProtocol(self, addr: object) -> WsPublishProtocol:
        proto = self._make()
        proto.factory = self
        return proto


def make_connector(
    reactor: Any, target: PushTarget, *, has_audio: bool, has_video: bool
) -> Connector:
    """A :data:`Connector` opening one TCP (or TLS) connection per attempt."""

    def endpoint() -> IStreamClientEndpoint:
        plain = HostnameEndpoint(reactor, target.host, target.port, timeout=SETUP_TIMEOUT_S)
        if target.tls:
            return wrapClientTLS(optionsForClientTLS(target.host), plain)
        return plain

    def connect(listener: SessionListener) -> None:
        factory: protocol.Factory
        if target.scheme == "rtmp":
            factory = protocol.Factory.forProtocol(
                lambda: RtmpPublishProtocol(target, listener, reactor)
            )
        elif target.scheme in ("http", "https"):
            factory = protocol.Factory.forProtocol(
                lambda: HttpPublishProtocol(target, listener, reactor,
                                            has_audio=has_audio, has_video=has_video)
            )
        else:
            factory = _WsFactory(
                lambda: WsPublishProtocol(target, listener, reactor,
                                          has_audio=has_audio, has_video=has_video),
                target.url(),
            )
        d = endpoint().connect(factory)

        def failed(failure: Failure) -> None:
            listener.session_lost(None, f"cannot connect: {failure.getErrorMessage()}", False)

        d.addErrback(failed)

    return connect


# -- command line ---------------------------------------------------------------------

_EPILOG = f"""\
URL schemes:
  rtmp://host[:port]/APP/STREAM     RTMP publish (port 1935 by default)
  http(s)://host[:port]/APP/STREAM  chunked HTTP POST of an FLV stream
  ws(s)://host[:port]/APP/STREAM    WebSocket, binary messages of FLV bytes

exit status:
  {EXIT_OK}  the whole input was sent and the stream ended cleanly, or stopped by SIGINT/SIGTERM
  {EXIT_DISCONNECTED}  the connection failed or dropped and --no-reconnect was given
  {EXIT_INPUT}  bad command line, or the input file is unsupported or damaged
  {EXIT_REFUSED}  the server refused the publish for good (bad name, forbidden, rejected)
"""


def _speed(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"speed {text!r} is not a number") from None
    if not MIN_SPEED <= value <= MAX_SPEED:
        raise argparse.ArgumentTypeError(f"speed {value:g} is outside {MIN_SPEED:g}..{MAX_SPEED:g}")
    return value


def _start(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"start {text!r} is not a number of seconds") from None
    if not 0 <= value < 1e9:
        raise argparse.ArgumentTypeError(f"start {value:g} s is negative or too large")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtmpd-push",
        description="Publish an FLV or MP4 file (H.264/H.265 + AAC) to a live server over "
        "RTMP, HTTP-FLV or WS-FLV, paced in real time.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="INPUT", type=Path,
                        help=".flv, or .mp4/.m4v/.mov (progressive or fragmented)")
    parser.add_argument("url", metavar="URL", help="where to publish (schemes below)")
    parser.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                        help="pace at X times real time, 0.1..10 (default 1)")
    parser.add_argument("--loop", action="store_true",
                        help="start over at the end, timestamps continuing")
    parser.add_argument("--no-reconnect", action="store_true",
                        help="exit 1 when the connection drops instead of reconnecting")
    parser.add_argument("--start", type=_start, default=0.0, metavar="SECONDS",
                        help="begin at the keyframe at or before this position")
    parser.add_argument("--version", action="version", version=__version__.public())
    return parser


def main(argv: Sequence[str] | None = None, *, reactor: Any = None,
         stderr: IO[str] | None = None) -> int:
    """Run ``rtmpd-push``; returns the exit status."""
    err = stderr if stderr is not None else sys.stderr
    args = build_parser().parse_args(argv)
    try:
        target = parse_target(args.url)
    except UsageError as e:
        err.write(f"rtmpd-push: error: {e}\n")
        return EXIT_INPUT
    try:
        source = open_source(args.input)
    except InputError as e:
        err.write(f"rtmpd-push: error: {e}\n")
        return EXIT_INPUT
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    try:
        return _run(reactor, source, target, args, err)
    except InputError as e:  # the file changed under us
        err.write(f"rtmpd-push: error: {e}\n")
        return EXIT_INPUT
    finally:
        source.close()


def _run(reactor: Any, source: PushSource, target: PushTarget, args: argparse.Namespace,
         err: IO[str]) -> int:
    result: list[tuple[int, str]] = []

    def on_exit(status: int, message: str) -> None:
        result.append((status, message))
        if reactor.running:
            reactor.stop()

    if args.start * 1000 >= source.duration_ms > 0:
        err.write(
            f"rtmpd-push: warning: --start {args.start:g} is past the end of the input "
            f"({source.duration_ms / 1000:g} s); starting at its last keyframe\n"
        )
    connector = make_connector(reactor, target, has_audio=source.has_audio,
                               has_video=source.has_video)
    pusher = Pusher(source, connector, reactor, on_exit, speed=args.speed, loop=args.loop,
                    start_ms=round(args.start * 1000), reconnect=not args.no_reconnect)
    progress = ProgressDisplay(pusher, reactor, err, tty=err.isatty())
    pusher.notify = progress.message

    def on_signal(signum: int, frame: object) -> None:
        reactor.callFromThread(pusher.stop)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        reactor.callWhenRunning(pusher.start)
        reactor.callWhenRunning(progress.start)
        reactor.run(installSignalHandlers=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        progress.stop()
    status, message = result[0] if result else (EXIT_OK, "")
    if message:
        err.write(f"rtmpd-push: {message}\n")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
