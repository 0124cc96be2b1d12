"""``rtmpd-push``: publish an FLV or MP4 file to a live server, paced like a live encoder.

::

    rtmpd-push INPUT URL [--speed X] [--loop] [--no-reconnect] [--start SECONDS]

The file is indexed by :mod:`rtmpd.client.sources`, paced by :mod:`rtmpd.client.pacing`
and sent over the session the URL's scheme picks (:mod:`rtmpd.client.connector`):

* ``rtmp://host[:port]/{app}/{stream}``: RTMP publish (:mod:`rtmpd.client.rtmp`);
* ``http(s)://host[:port]/{app}/{stream}``: one chunked ``POST`` whose body is an FLV
  stream (:mod:`rtmpd.client.http`);
* ``ws(s)://host[:port]/{app}/{stream}``: WebSocket, binary messages of FLV bytes
  (:mod:`rtmpd.client.ws`).

Progress (:class:`ProgressDisplay`) and news (reconnecting, refused) go to stderr. SIGINT /
SIGTERM end the stream the way each protocol expects (RTMP FCUnpublish + deleteStream,
HTTP the last 0-length chunk, WS close 1000); a second one does not wait.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from rtmpd import __version__
from rtmpd.client.connector import make_connector
from rtmpd.client.pacing import (
    EXIT_DISCONNECTED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_REFUSED,
    MAX_SPEED,
    MIN_SPEED,
    Pusher,
)
from rtmpd.client.sources import InputError, PushSource, open_source
from rtmpd.client.target import PushTarget, UsageError, parse_target
from rtmpd.client.tls import load_ca_file

if TYPE_CHECKING:
    from rtmpd.client.tls import TrustRoot

__all__ = ["PROGRESS_LOG_S", "PROGRESS_TTY_S", "ProgressDisplay", "build_parser", "main"]

#: Progress redraw interval on a terminal, and log interval otherwise.
PROGRESS_TTY_S = 1.0
PROGRESS_LOG_S = 5.0


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


# -- command line ---------------------------------------------------------------------

_EPILOG = f"""\
URL schemes:
  rtmp://host[:port]/APP/STREAM     RTMP publish (port 1935 by default)
  rtmps://host[:port]/APP/STREAM    RTMP over TLS (port 443 by default)
  http(s)://host[:port]/APP/STREAM  chunked HTTP POST of an FLV stream
  ws(s)://host[:port]/APP/STREAM    WebSocket, binary messages of FLV bytes

exit status:
  {EXIT_OK}  the whole input was sent and the stream ended cleanly, or stopped by SIGINT/SIGTERM
  {EXIT_DISCONNECTED}  the connection failed or dropped and --no-reconnect was given
  {EXIT_INPUT}  bad command line, or the input file is unsupported or damaged
  {EXIT_REFUSED}  the server refused the publish for good (bad name, forbidden, rejected),
     or its TLS certificate did not verify (unknown CA, another host's name)

TLS (rtmps, https, wss): the server's certificate must name the URL's host and chain
to a CA the system trusts, or to one in --ca-file.
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
    parser.add_argument("--ca-file", metavar="PEM",
                        help="trust only the CA certificates in this PEM file for TLS "
                        "(default: the system's CAs)")
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
    trust_root = None
    if args.ca_file is not None:
        try:
            trust_root = load_ca_file(args.ca_file)
        except ValueError as e:
            err.write(f"rtmpd-push: error: --ca-file: {e}\n")
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
        return _run(reactor, source, target, args, err, trust_root)
    except InputError as e:  # the file changed under us
        err.write(f"rtmpd-push: error: {e}\n")
        return EXIT_INPUT
    finally:
        source.close()


def _run(reactor: Any, source: PushSource, target: PushTarget, args: argparse.Namespace,
         err: IO[str], trust_root: TrustRoot | None = None) -> int:
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
                               has_video=source.has_video, trust_root=trust_root)
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
